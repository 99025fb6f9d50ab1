// Package embedded runs a single-node NATS server with JetStream inside a Go
// process. `make run` uses it so one machine needs nothing installed, and
// tests use it through natstest; production points services at a cluster.
package embedded

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options configures the embedded server.
type Options struct {
	// Listen is host:port for clients; port 0 picks a free port.
	Listen string
	// StoreDir holds JetStream's files.
	StoreDir string
	// SyncAlways fsyncs every write instead of every SyncInterval.
	SyncAlways bool
	// MaxPayload raises the server's message size limit; 0 keeps 1 MiB.
	MaxPayload int32
	// MaxStore caps JetStream file storage in bytes; 0 is the server default.
	MaxStore int64
	// TLS, when set, makes clients connect with TLS (tls:// URLs).
	TLS *tls.Config
	// User and Password, when User is set, are the one user clients must
	// authenticate as.
	User, Password string
}

// Server is a running embedded NATS server.
type Server struct {
	ns *server.Server
}

// Start starts the server and waits until it accepts clients.
func Start(o Options) (*Server, error) {
	host, portStr, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: listen %q: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: port %q: %w", portStr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if o.StoreDir == "" {
		return nil, errors.New("embedded nats: a store directory is required")
	}
	opts := &server.Options{
		ServerName:            "sluice-embedded",
		Host:                  host,
		Port:                  port,
		JetStream:             true,
		StoreDir:              o.StoreDir,
		SyncAlways:            o.SyncAlways,
		MaxPayload:            o.MaxPayload,
		JetStreamMaxStore:     o.MaxStore,
		NoSigs:                true,
		DisableShortFirstPing: true,
		Username:              o.User,
		Password:              o.Password,
	}
	if o.TLS != nil {
		opts.TLS, opts.TLSConfig, opts.TLSTimeout = true, o.TLS, 5
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		// The server says nothing when it cannot listen: try it here.
		if port != server.RANDOM_PORT {
			ln, err := net.Listen("tcp", o.Listen)
			if err != nil {
				return nil, fmt.Errorf("embedded nats: not ready after 10s: %w", err)
			}
			ln.Close()
		}
		return nil, errors.New("embedded nats: not ready after 10s")
	}
	return &Server{ns: ns}, nil
}

// ClientURL is the nats:// URL clients connect to.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// InProcess lets clients in this process connect without a socket
// (nats.InProcessServer). Their writes are queued (see queuedConn).
func (s *Server) InProcess() nats.InProcessConnProvider { return inProcess{s.ns} }

type inProcess struct{ ns *server.Server }

func (p inProcess) InProcessConn() (net.Conn, error) {
	c, err := p.ns.InProcessConn()
	if err != nil {
		return nil, err
	}
	return newQueuedConn(c, queueLimit), nil
}

// Shutdown stops the server and waits for it; it is safe to call twice.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}
