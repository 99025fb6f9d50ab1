package smtpd

import (
	"net"
	"sync"
	"time"
)

// trackingListener remembers every accepted connection so that a stopping
// server can close them all, including clients that connected but never
// said EHLO (go-smtp's own Close does not reach those after a Shutdown).
// Its connections also turn the read timeout into an idle timeout: go-smtp
// sets one deadline when it reads the DATA command, which would cut off a
// large message on a slow link, whereas RFC 5321 §4.5.3.2.6 asks for a
// timeout per read ("DATA Block: 3 minutes").
type trackingListener struct {
	net.Listener
	readTimeout time.Duration

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

func newTrackingListener(ln net.Listener, readTimeout time.Duration) *trackingListener {
	return &trackingListener{Listener: ln, readTimeout: readTimeout, conns: map[*trackedConn]struct{}{}}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	l.conns[tc] = struct{}{}
	return tc, nil
}

// closeAll closes every connection and refuses any accepted later.
func (l *trackingListener) closeAll() {
	l.mu.Lock()
	l.closed = true
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Read(b []byte) (int, error) {
	if c.l.readTimeout > 0 {
		if err := c.Conn.SetReadDeadline(time.Now().Add(c.l.readTimeout)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(b)
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
