package natsconn

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/sluice-mta/sluice/services/config"
)

// TestNKeyAuthentication connects with an NKey seed file to a server that
// only knows the user's public key, and is refused with another key.
func TestNKeyAuthentication(t *testing.T) {
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true,
		Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(5 * time.Second) {
		t.Fatal("server not ready")
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "user.nk")
	os.WriteFile(good, seed, 0o600)
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	bad := filepath.Join(dir, "other.nk")
	os.WriteFile(bad, otherSeed, 0o600)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	cfg := config.DefaultNATS()
	cfg.URL = ns.ClientURL()
	cfg.NKeySeedFile = good
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	nc, _, err := Connect(context.Background(), cfg, "t", log)
	if err != nil {
		t.Fatalf("connect with the right NKey: %v", err)
	}
	nc.Close()

	cfg.NKeySeedFile = bad
	if nc, _, err := Connect(context.Background(), cfg, "t", log); err == nil {
		nc.Close()
		t.Fatal("a wrong NKey was let in")
	}
	cfg.NKeySeedFile = filepath.Join(dir, "missing.nk")
	if _, _, err := Connect(context.Background(), cfg, "t", log); err == nil || !strings.Contains(err.Error(), "nkey_seed_file") {
		t.Fatalf("a missing seed file: %v, want an error naming nats.nkey_seed_file", err)
	}
	cfg.NKeySeedFile, cfg.User = good, "someone"
	if err := cfg.Validate(); err == nil {
		t.Fatal("Validate accepted two ways to authenticate")
	}
}
