// Package guard protects the SMTP ingress from its clients at the level
// of the connection, below go-smtp, which by itself passes bare LF and
// bare CR through, reads a line for as long as a client trickles it, and
// accepts any number of connections.
//
// A Listener wraps the server's net.Listener. At Accept it enforces the
// connection limits (in total and per client address) and refuses
// clients while the queue's storage is known to be down, answering
// 421 before go-smtp sees the connection. Every accepted connection is a
// Conn, which checks the client's octets before go-smtp reads them:
//
//   - SMTP smuggling: a bare LF or bare CR anywhere (commands, DATA
//     content, BDAT chunks) is answered "521 5.5.2 Bare LF/CR not allowed
//     (SMTP smuggling protection)" and the connection is closed, as
//     Postfix does with smtpd_forbid_bare_newline. Closing (rather than
//     refusing one transaction) is deliberate: after a bare newline the
//     server and the client no longer agree where commands and content
//     begin, so nothing after it can be trusted; the message in progress
//     is never stored, because go-smtp's data reader fails before it
//     reaches the end of the data.
//   - Lines longer than MaxLineLength: "500 5.5.2 Line too long", closed.
//   - Slow clients: each line must arrive complete within ReadTimeout of
//     its start, however slowly its octets trickle in, and the whole
//     message content within DataTimeout: "421 4.4.2", closed.
//   - Abuse: the MaxErrors-th 5xx reply of a session, or more than
//     MaxCommands commands without a MAIL being accepted: "421 4.7.0",
//     closed. Any 421 the server gives closes the connection
//     (RFC 5321 §3.8).
//
// The Conn follows the dialogue by reading the server's replies as well
// (354 starts DATA content) and parses BDAT command lines exactly as
// go-smtp does, so it knows which octets are chunk content.
//
// The guard must read plaintext, so it is stacked above the layer that
// terminates TLS (smtpconn, in the ingress), and then sees the same
// stream on every port and after STARTTLS. If go-smtp itself answered
// STARTTLS with 220, the stream below it becomes TLS records that the Conn
// cannot read, and it passes them through; the session's ContentReader
// still refuses smuggled content then (550 5.5.2), but command lines are
// no longer checked.
package guard

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Options configure a Listener. Zero limits mean no limit.
type Options struct {
	// MaxLineLength is the longest line, CRLF included, in commands and
	// in message content.
	MaxLineLength int
	// ReadTimeout is the time a client has for each line, from the moment
	// the server waits for it until its CRLF.
	ReadTimeout time.Duration
	// WriteTimeout bounds the guard's own replies.
	WriteTimeout time.Duration
	// DataTimeout is the time a client has for a message's content, from
	// the 354 reply (or the first BDAT) to the end of the data.
	DataTimeout time.Duration
	// MaxErrors is the number of 5xx replies after which the session is
	// closed.
	MaxErrors int
	// MaxCommands is the number of commands other than MAIL, RCPT, DATA,
	// BDAT and QUIT (NOOP, RSET, VRFY, HELO, ...) a client may send before
	// the server accepts a MAIL, counted again after each accepted MAIL.
	MaxCommands int
	// MaxConnections is the number of connections open at once.
	MaxConnections int
	// MaxConnectionsPerClient is the number of connections open at once
	// from one client IP address.
	MaxConnectionsPerClient int
	// Exempt reports clients the per-client limit does not apply to: the
	// trusted networks, whose mail servers and applications open many
	// connections at once (Postfix exempts $mynetworks the same way).
	// Nil exempts no one.
	Exempt func(netip.Addr) bool
	// Available reports whether the queue's storage can take messages;
	// while it returns false, new connections are refused with 421 4.3.2.
	// Nil means always.
	Available func() bool

	Meter  metric.Meter
	Logger *slog.Logger
}

func (o Options) validate() error {
	switch {
	case o.MaxLineLength <= 0:
		return errors.New("guard: MaxLineLength must be positive")
	case o.ReadTimeout <= 0 || o.WriteTimeout <= 0:
		return errors.New("guard: ReadTimeout and WriteTimeout must be positive")
	case o.DataTimeout < 0 || o.MaxErrors < 0 || o.MaxCommands < 0 || o.MaxConnections < 0 || o.MaxConnectionsPerClient < 0:
		return errors.New("guard: limits must not be negative")
	case o.Meter == nil || o.Logger == nil:
		return errors.New("guard: Meter and Logger are required")
	}
	return nil
}

// Guard holds the options and the instruments shared by the listeners it
// guards.
type Guard struct {
	opts    Options
	metrics *metrics
}

// New returns a Guard with options o.
func New(o Options) (*Guard, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Meter)
	if err != nil {
		return nil, err
	}
	return &Guard{opts: o, metrics: m}, nil
}

// Listener is a net.Listener whose connections are guarded. Connection
// limits count per Listener.
type Listener struct {
	net.Listener
	opts    Options
	metrics *metrics

	mu       sync.Mutex
	total    int
	byClient map[netip.Addr]int
}

var _ net.Listener = (*Listener)(nil)

// Listen guards the connections of ln.
func (g *Guard) Listen(ln net.Listener) *Listener {
	return &Listener{Listener: ln, opts: g.opts, metrics: g.metrics, byClient: map[netip.Addr]int{}}
}

// Accept returns the next connection within the limits. Connections over
// a limit are answered and closed here, and Accept waits for the next.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		client := clientAddr(nc.RemoteAddr())
		r := l.admit(client)
		if r != 0 {
			l.refuse(nc, client, r)
			continue
		}
		c := &Conn{Conn: nc, l: l, client: client, sc: newScanner(l.opts.MaxLineLength)}
		l.metrics.open.Add(contextBackground, 1)
		return c, nil
	}
}

// admit counts a new connection from client, or says why it is refused.
func (l *Listener) admit(client netip.Addr) Reason {
	if l.opts.Available != nil && !l.opts.Available() {
		return ReasonStorageUnavailable
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.opts.MaxConnections > 0 && l.total >= l.opts.MaxConnections {
		return ReasonTooManyConnections
	}
	if l.opts.MaxConnectionsPerClient > 0 && l.byClient[client] >= l.opts.MaxConnectionsPerClient && (l.opts.Exempt == nil || !l.opts.Exempt(client)) {
		return ReasonTooManyFromClient
	}
	l.total++
	l.byClient[client]++
	return 0
}

// refuse answers a connection that is not admitted and closes it. The
// write cannot block for long: the connection is new, so its send buffer
// is empty, and the deadline bounds it anyway.
func (l *Listener) refuse(nc net.Conn, client netip.Addr, r Reason) {
	l.metrics.refused.Add(contextBackground, 1, reasonAttr(r))
	l.opts.Logger.Info("connection refused", "client", client.String(), "reason", r.String())
	reply := r.reply()
	_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = fmt.Fprintf(nc, "%d %d.%d.%d %s\r\n", reply.Code, reply.EnhancedCode[0], reply.EnhancedCode[1], reply.EnhancedCode[2], reply.Message)
	_ = nc.Close()
}

// release forgets a closed connection.
func (l *Listener) release(c *Conn) {
	l.mu.Lock()
	l.total--
	if l.byClient[c.client]--; l.byClient[c.client] <= 0 {
		delete(l.byClient, c.client)
	}
	l.mu.Unlock()
	l.metrics.open.Add(contextBackground, -1)
}

// closed records a connection the guard closed for breaking a rule.
func (l *Listener) closed(c *Conn, r Reason) {
	l.metrics.closed.Add(contextBackground, 1, reasonAttr(r))
	l.opts.Logger.Info("connection closed by guard", "client", c.RemoteAddr().String(), "reason", r.String())
}

// clientAddr returns the IP address of a remote address, unmapped so that
// an IPv4 client on a dual-stack socket counts once.
func clientAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
