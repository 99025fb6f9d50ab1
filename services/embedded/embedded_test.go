package embedded

import (
	"net"
	"strings"
	"testing"
)

// TestStartNamesATakenAddress: the server says nothing when it cannot
// listen and only never becomes ready; Start's error says why.
func TestStartNamesATakenAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ns, err := Start(Options{Listen: ln.Addr().String(), StoreDir: t.TempDir()})
	if err == nil {
		ns.Shutdown()
		t.Fatal("started on an address another socket listens on")
	}
	if !strings.Contains(err.Error(), "not ready after 10s") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("error %q, want it to say the address is in use", err)
	}
}
