package refs

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

func TestEncoding(t *testing.T) {
	for _, ids := range [][]string{nil, {"Q-0"}, {"Q-0", "Q-1", "Q-12"}} {
		got := Decode(Encode(ids))
		if len(ids) == 0 && len(got) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, ids) {
			t.Errorf("round trip of %v gave %v", ids, got)
		}
	}
	if got := string(Encode([]string{"A-0", "A-1"})); got != "A-0\nA-1" {
		t.Errorf("encoding %q", got)
	}
}

// Concurrent completions of every job of a message leave exactly one
// caller seeing the last one, and repeated completions change nothing.
func TestDoneConcurrent(t *testing.T) {
	s := natstest.Start(t)
	_, js := s.Connect(t)
	ctx := context.Background()
	kv, err := streams.Refs(ctx, js, config.DefaultQueue())
	if err != nil {
		t.Fatal(err)
	}
	const n = 24
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("Q-%d", i)
	}
	if err := Create(ctx, kv, "Q", ids); err != nil {
		t.Fatal(err)
	}
	// A redone split does not resurrect anything.
	if err := Create(ctx, kv, "Q", ids[:1]); err != nil {
		t.Fatal(err)
	}
	if open, _ := Open(ctx, kv, "Q"); len(open) != n {
		t.Fatalf("open %v after a second Create", open)
	}

	if last, err := Done(ctx, kv, "Q", "Q-0"); err != nil || last {
		t.Fatalf("Done(Q-0) = %v, %v", last, err)
	}
	if last, err := Done(ctx, kv, "Q", "Q-0"); err != nil || last {
		t.Fatalf("repeated Done(Q-0) = %v, %v", last, err)
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	lasts := 0
	for _, id := range ids[1:] {
		for range 2 { // every job completes twice, concurrently
			wg.Add(1)
			go func() {
				defer wg.Done()
				last, err := Done(ctx, kv, "Q", id)
				if err != nil {
					t.Error(err)
				}
				if last {
					mu.Lock()
					lasts++
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	// The entry is gone; the caller(s) that saw the end include the one
	// that removed the last id, and late duplicates may see the missing
	// entry (reported as finished, so clean-up can be completed).
	if lasts < 1 {
		t.Errorf("no caller saw the last job finish")
	}
	if open, err := Open(ctx, kv, "Q"); err != nil || len(open) != 0 {
		t.Errorf("open after all done: %v, %v", open, err)
	}
	if last, err := Done(ctx, kv, "Q", "Q-5"); err != nil || !last {
		t.Errorf("Done on a finished message = %v, %v; want true", last, err)
	}
}
