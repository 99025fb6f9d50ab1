package streams

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
)

// apiLog records the JetStream API requests a connection of the same
// account sees, subject and payload.
type apiLog struct {
	mu   sync.Mutex
	reqs []string
}

func watchAPI(t *testing.T, nc *nats.Conn) *apiLog {
	t.Helper()
	l := &apiLog{}
	sub, err := nc.Subscribe("$JS.API.>", func(m *nats.Msg) {
		l.mu.Lock()
		l.reqs = append(l.reqs, m.Subject+" "+string(m.Data))
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *apiLog) take(t *testing.T, nc *nats.Conn) []string {
	t.Helper()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.reqs
	l.reqs = nil
	return r
}

// TestDeleteBody deletes bodies as the scheduler does, by the chunk id the
// ingress recorded: two purges each and nothing else, no deletion marker
// left in the bucket's stream, so the blocks that held the bodies are gone
// from the disk at once; the object store and the leader both say a body
// is gone, another body is untouched, and a second deletion is no error.
func TestDeleteBody(t *testing.T) {
	s, nc, js, obs, _ := bodiesForTest(t)
	ctx := context.Background()
	// 24 MiB: three of the stream's 8 MiB blocks.
	content := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	nuids := map[string]string{}
	for i := range 24 {
		name := fmt.Sprintf("Q%02d", i)
		info, err := obs.PutBytes(ctx, name, content)
		if err != nil {
			t.Fatal(err)
		}
		nuids[name] = info.NUID
	}
	if _, err := obs.PutBytes(ctx, "KEEP", []byte("another body")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.Dir, "jetstream", "$G", "streams", "OBJ_"+wire.BucketBodies, "msgs")
	if n := diskBytes(t, dir); n < 24<<20 {
		t.Fatalf("the bodies take %d bytes on disk, want at least 24 MiB", n)
	}

	api := watchAPI(t, nc)
	if err := DeleteBody(ctx, js, wire.BucketBodies, "Q00", nuids["Q00"]); err != nil {
		t.Fatal(err)
	}
	reqs := api.take(t, nc)
	want := []string{
		"$JS.API.STREAM.PURGE.OBJ_" + wire.BucketBodies + ` {"filter":"$O.` + wire.BucketBodies + ".C." + nuids["Q00"] + `"}`,
		"$JS.API.STREAM.PURGE.OBJ_" + wire.BucketBodies + ` {"filter":"$O.` + wire.BucketBodies + `.M.UTAw"}`,
	}
	if strings.Join(reqs, "\n") != strings.Join(want, "\n") {
		t.Fatalf("deletion made requests\n%s\nwant\n%s", strings.Join(reqs, "\n"), strings.Join(want, "\n"))
	}
	for name, nuid := range nuids {
		if err := DeleteBody(ctx, js, wire.BucketBodies, name, nuid); err != nil {
			t.Fatal(err)
		}
	}
	st, err := js.Stream(ctx, "OBJ_"+wire.BucketBodies)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 2 {
		t.Fatalf("the bucket's stream holds %d messages after the deletions, want 2 (the other body's chunk and metadata)", n)
	}
	// What stays is the tail of the block still being written.
	if n := diskBytes(t, dir); n > 1<<20 {
		t.Fatalf("the deleted bodies' stream still takes %d bytes on disk", n)
	}
	if _, err := obs.GetInfo(ctx, "Q00"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("object store after deletion: %v, want not found", err)
	}
	if gone, err := ObjectGone(ctx, js, wire.BucketBodies, "Q00"); err != nil || !gone {
		t.Fatalf("ObjectGone = %v, %v after deletion", gone, err)
	}
	if got, err := obs.GetBytes(ctx, "KEEP"); err != nil || string(got) != "another body" {
		t.Fatalf("the other body reads %q, %v", got, err)
	}
	if err := DeleteBody(ctx, js, wire.BucketBodies, "Q00", nuids["Q00"]); err != nil {
		t.Fatalf("second deletion: %v", err)
	}
}

func diskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, f := range files {
		if fi, err := f.Info(); err == nil && !f.IsDir() {
			n += fi.Size()
		}
	}
	return n
}
