package smtpd

import (
	"net"
	"sync"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/ingress/smtpconn"
)

// Listener names, used in logs, in ListenerAddr and as the value of the
// "listener" attribute on spans.
const (
	// ListenerSMTP is port 25: relay for trusted networks and inbound MX for
	// the accepted domains, decided per recipient.
	ListenerSMTP = "smtp"
	// ListenerSubmission is port 587: STARTTLS, then AUTH, then mail.
	ListenerSubmission = "submission"
	// ListenerSubmissions is port 465: implicit TLS (RFC 8314 §3.3), then
	// AUTH, then mail.
	ListenerSubmissions = "submissions"
)

// listener is one listening socket with its policy and its own go-smtp
// server (go-smtp's settings are per server, and the backend tells the
// session which listener it serves).
type listener struct {
	name string
	addr string
	// submission listeners offer AUTH and accept mail only from
	// authenticated users.
	submission bool
	front      smtpconn.Config

	srv  *smtp.Server
	ln   *trackingListener
	fl   *frontListener
	done chan struct{}
}

// frontListener puts every accepted connection behind an smtpconn.Conn,
// which terminates TLS and adapts commands, and remembers it by remote
// address so the session can reach it even when another plaintext layer is
// stacked between it and go-smtp.
type frontListener struct {
	net.Listener
	cfg smtpconn.Config

	mu    sync.Mutex
	conns map[string]*smtpconn.Conn
}

func newFrontListener(ln net.Listener, cfg smtpconn.Config) *frontListener {
	return &frontListener{Listener: ln, cfg: cfg, conns: map[string]*smtpconn.Conn{}}
}

func (l *frontListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	fc := &frontConn{Conn: smtpconn.Server(c, l.cfg), l: l}
	l.mu.Lock()
	l.conns[c.RemoteAddr().String()] = fc.Conn
	l.mu.Unlock()
	// Plaintext layers (anything that must see commands and content as the
	// client sent them, TLS removed) wrap fc here.
	return fc, nil
}

// lookup finds the front of the connection whose client is remote.
func (l *frontListener) lookup(remote net.Addr) *smtpconn.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[remote.String()]
}

// frontConn forgets the connection when go-smtp closes it.
type frontConn struct {
	*smtpconn.Conn
	l    *frontListener
	once sync.Once
}

func (c *frontConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c.RemoteAddr().String())
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
