package admin

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/scheduler/index"
)

// A listing of many jobs is paged: the first page selects and sorts every
// matching job once and keeps the result (a snapshot) for a while, so the
// next pages are slices of it. The cursor names the snapshot and the
// position, and also the last job returned, so that an instance that does
// not have the snapshot (another scheduler of the queue group, or after the
// snapshot expired) continues after that job in a fresh selection.
const (
	snapshotTTL = 2 * time.Minute
	// maxSnaps bounds the memory of listings in progress: a snapshot of a
	// million jobs is about 32 MB.
	maxSnaps = 4
)

type snapshot struct {
	token   string
	refs    []index.Ref
	created time.Time
}

type snapshots struct {
	mu sync.Mutex
	m  map[string]*snapshot
}

func newSnapshots() *snapshots { return &snapshots{m: map[string]*snapshot{}} }

func (ss *snapshots) put(refs []index.Ref) *snapshot {
	var b [8]byte
	_, _ = rand.Read(b[:])
	sn := &snapshot{token: hex.EncodeToString(b[:]), refs: refs, created: time.Now()}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var oldest *snapshot
	for k, v := range ss.m {
		if time.Since(v.created) > snapshotTTL {
			delete(ss.m, k)
			continue
		}
		if oldest == nil || v.created.Before(oldest.created) {
			oldest = v
		}
	}
	if len(ss.m) >= maxSnaps && oldest != nil {
		delete(ss.m, oldest.token)
	}
	ss.m[sn.token] = sn
	return sn
}

// resume returns the snapshot and offset a cursor names, or a nil snapshot
// when this instance does not have it.
func (ss *snapshots) resume(cursor string) (*snapshot, int, error) {
	if cursor == "" {
		return nil, 0, nil
	}
	parts := strings.SplitN(cursor, ":", 4)
	if len(parts) != 4 {
		return nil, 0, fmt.Errorf("cursor: malformed %q", cursor)
	}
	off, err := strconv.Atoi(parts[1])
	if err != nil || off < 0 {
		return nil, 0, fmt.Errorf("cursor: malformed %q", cursor)
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sn, ok := ss.m[parts[0]]
	if !ok || off > len(sn.refs) {
		return nil, 0, nil
	}
	return sn, off, nil
}

// done forgets a snapshot whose last page was served.
func (ss *snapshots) done(sn *snapshot) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, sn.token)
}

// cursor is the cursor of the page starting at end.
func (sn *snapshot) cursor(end int) string {
	last := sn.refs[end-1]
	return fmt.Sprintf("%s:%d:%d:%s", sn.token, end, last.Received, last.ID)
}

type cursorPos struct {
	ref index.Ref
}

func parseCursor(c string) (cursorPos, bool) {
	parts := strings.SplitN(c, ":", 4)
	if len(parts) != 4 {
		return cursorPos{}, false
	}
	rcv, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return cursorPos{}, false
	}
	return cursorPos{ref: index.Ref{Received: rcv, ID: parts[3]}}, true
}

// after returns the position of the first ref after the cursor's job.
func (c cursorPos) after(refs []index.Ref) int {
	return sort.Search(len(refs), func(i int) bool { return c.ref.Less(refs[i]) })
}
