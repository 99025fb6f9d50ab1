// Package natstest starts a throwaway embedded JetStream server for tests.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/services/embedded"
)

// Server is a JetStream server on loopback with its files in a test's
// temporary directory.
type Server struct {
	*embedded.Server
	Dir string
}

// Start starts a server that the test shuts down when it ends.
func Start(t testing.TB) *Server {
	t.Helper()
	dir := t.TempDir()
	s, err := embedded.Start(embedded.Options{Listen: "127.0.0.1:0", StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return &Server{Server: s, Dir: dir}
}

// Connect returns a connection and JetStream context closed when the test ends.
func (s *Server) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return ConnectTo(t, s.ClientURL())
}

// ConnectTo is Connect to the servers of url (comma-separated for a
// cluster: Cluster.URLs).
func ConnectTo(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}
