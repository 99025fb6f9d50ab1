package index

import (
	"encoding/binary"
	"hash/maphash"
	"unsafe"
)

// storage holds the index's per-job data: the entries, the bytes of job
// ids and recipients (the arena) and the table from job id to entry. None
// of it contains a pointer, and all of it lives outside the Go heap
// (sysAlloc: mmap). Why: a million jobs take about 110 MB here, and on the
// heap the collector lets the heap grow well beyond what is live before it
// collects (by GOGC percent), so the process would need two or three times
// that, with the garbage of reading millions of events on top while the
// index is rebuilt.
// Outside the heap the index costs what it holds; the collector neither
// scans it nor counts it. The price is freeing by hand: chunks are
// released only by Index methods under the write lock, or when the index is
// garbage (runtime.AddCleanup), and nothing that points into them (see
// view) may outlive the lock it was made under.
type storage struct {
	slab  slab
	arena arena
	table table
}

func (s *storage) free() {
	for _, c := range s.slab.chunks {
		sysFree(entryBytes(c))
	}
	s.arena.free()
	sysFree(s.table.bytes())
	*s = storage{}
}

// slab stores entries in fixed-size chunks: growing never copies the
// entries already there (a million of them would be copied, and held twice,
// at every doubling of one big slice).
type slab struct {
	chunks [][]entry
	n      int32
}

const chunkBits = 12

func (s *slab) at(i int32) *entry { return &s.chunks[i>>chunkBits][i&(1<<chunkBits-1)] }

func (s *slab) grow() int32 {
	if int(s.n)>>chunkBits == len(s.chunks) {
		b := sysAlloc(int(unsafe.Sizeof(entry{})) << chunkBits)
		s.chunks = append(s.chunks, unsafe.Slice((*entry)(unsafe.Pointer(unsafe.SliceData(b))), 1<<chunkBits))
	}
	s.n++
	return s.n - 1
}

func entryBytes(c []entry) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(c))), len(c)*int(unsafe.Sizeof(entry{})))
}

// arena holds each job's record: the length of its id (uvarint), the id,
// and its recipients separated by "\n". A record is written once and
// shrunk in place (a deferral leaves fewer recipients); a replaced or
// removed record is dead space, reclaimed by compact when there is more of
// it than live records. A position is chunk<<arenaBits | offset: records
// never span chunks, and one larger than a chunk gets a chunk of its own.
type arena struct {
	chunks [][]byte
	used   int // bytes in chunks, written or skipped
	live   int // bytes of live records
}

const arenaBits = 18 // 256 KiB chunks

// alloc reserves n bytes and returns their position and memory.
func (a *arena) alloc(n int) (uint32, []byte) {
	last := len(a.chunks) - 1
	if last < 0 || len(a.chunks[last])+n > cap(a.chunks[last]) {
		size := max(n, 1<<arenaBits)
		if last >= 0 {
			// The rest of the full chunk is never written.
			a.used += cap(a.chunks[last]) - len(a.chunks[last])
		}
		a.chunks = append(a.chunks, sysAlloc(size)[:0])
		last++
		if last >= 1<<(32-arenaBits) {
			panic("queue index: arena beyond 4 GiB")
		}
	}
	c := a.chunks[last]
	off := len(c)
	a.chunks[last] = c[:off+n]
	a.used += n
	a.live += n
	return uint32(last)<<arenaBits | uint32(off), a.chunks[last][off : off+n : off+n]
}

// grow lengthens the record at pos from n to m bytes in place, when it is
// the last one written and its chunk has room: a job's record, made with
// its id, usually gets its recipients right after.
func (a *arena) grow(pos, n, m uint32) ([]byte, bool) {
	last := len(a.chunks) - 1
	off := int(pos & (1<<arenaBits - 1))
	if last < 0 || int(pos>>arenaBits) != last {
		return nil, false
	}
	c := a.chunks[last]
	if off+int(n) != len(c) || off+int(m) > cap(c) {
		return nil, false
	}
	a.chunks[last] = c[:off+int(m)]
	a.used += int(m - n)
	a.live += int(m - n)
	return a.chunks[last][off : off+int(m) : off+int(m)], true
}

// at is the memory of the record at pos of n bytes.
func (a *arena) at(pos, n uint32) []byte {
	off := pos & (1<<arenaBits - 1)
	return a.chunks[pos>>arenaBits][off : off+n : off+n]
}

// dead counts n bytes of records no longer used.
func (a *arena) dead(n uint32) { a.live -= int(n) }

// wasteful reports whether compacting is worth it: more dead space than
// live, and at least a few chunks of it.
func (a *arena) wasteful() bool {
	waste := a.used - a.live
	return waste > a.live && waste >= 4<<arenaBits
}

func (a *arena) free() {
	for _, c := range a.chunks {
		sysFree(c[:cap(c)])
	}
	*a = arena{}
}

// record makes the record of id and rcpts.
func (a *arena) record(id string, rcpts []byte) (uint32, uint32) {
	var hdr [binary.MaxVarintLen64]byte
	h := binary.PutUvarint(hdr[:], uint64(len(id)))
	n := h + len(id) + len(rcpts)
	pos, b := a.alloc(n)
	copy(b, hdr[:h])
	copy(b[h:], id)
	copy(b[h+len(id):], rcpts)
	return pos, uint32(n)
}

// split returns the id and recipients of a record.
func split(rec []byte) ([]byte, []byte) {
	l, h := binary.Uvarint(rec)
	return rec[h : h+int(l)], rec[h+int(l):]
}

// view is a string sharing b's memory: valid only while the index lock it
// was made under is held, and never to be returned to a caller.
func view(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// table maps job ids to entries: open addressing with linear probing, at
// most three quarters full. A cell holds the entry's slot plus one (0 is
// empty) and, in its upper half, the upper half of the id's hash (its
// tag), which is also where probing starts (tag & mask): a probe compares
// ids in the arena only when the tags agree, and growing or deleting needs
// no id at all. 8 bytes a cell is about 17 bytes a job.
type table struct {
	cells []uint64
	n     int
	seed  maphash.Seed
}

func (t *table) bytes() []byte {
	if t.cells == nil {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(t.cells))), len(t.cells)*8)
}

func newCells(n int) []uint64 {
	b := sysAlloc(n * 8)
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

func (t *table) tag(id string) uint32 { return uint32(maphash.String(t.seed, id) >> 32) }

// find returns the slot of the entry with id, and id's tag.
func (s *storage) find(id string) (int32, bool, uint32) {
	tag := s.table.tag(id)
	cells := s.table.cells
	if len(cells) == 0 {
		return 0, false, tag
	}
	mask := uint32(len(cells) - 1)
	for i := tag & mask; ; i = (i + 1) & mask {
		c := cells[i]
		if c == 0 {
			return 0, false, tag
		}
		if uint32(c>>32) == tag && s.idOf(s.slab.at(int32(uint32(c))-1)) == id {
			return int32(uint32(c)) - 1, true, tag
		}
	}
}

// lookup returns the slot of the entry with id.
func (s *storage) lookup(id string) (int32, bool) {
	slot, ok, _ := s.find(id)
	return slot, ok
}

// insert adds slot, whose id has tag, to the table (it is not there).
func (s *storage) insert(slot int32, tag uint32) {
	t := &s.table
	if (t.n+1)*4 > len(t.cells)*3 {
		s.rehash(max(1024, 2*len(t.cells)))
	}
	t.place(uint64(tag)<<32 | uint64(slot+1))
	t.n++
}

func (t *table) place(c uint64) {
	mask := uint32(len(t.cells) - 1)
	i := uint32(c>>32) & mask
	for t.cells[i] != 0 {
		i = (i + 1) & mask
	}
	t.cells[i] = c
}

// rehash moves every cell into a table of n cells (a power of two).
func (s *storage) rehash(n int) {
	old := s.table.cells
	s.table.cells = newCells(n)
	for _, c := range old {
		if c != 0 {
			s.table.place(c)
		}
	}
	sysFree(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(old))), len(old)*8))
}

// delete removes slot from the table, moving back the cells after it that
// probing would no longer reach (backward shift deletion, so the table
// needs no tombstones).
func (s *storage) delete(slot int32) {
	t := &s.table
	if len(t.cells) == 0 {
		return
	}
	mask := uint32(len(t.cells) - 1)
	i := t.tag(s.idOf(s.slab.at(slot))) & mask
	for {
		c := t.cells[i]
		if c == 0 {
			return
		}
		if int32(uint32(c))-1 == slot {
			break
		}
		i = (i + 1) & mask
	}
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		c := t.cells[j]
		if c == 0 {
			break
		}
		home := uint32(c>>32) & mask
		// The cell at j may move to the hole at i when its home is not
		// in the cyclic range (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.cells[i] = c
			i = j
		}
	}
	t.cells[i] = 0
	t.n--
}

// idOf is a view of the id of a live entry.
func (s *storage) idOf(e *entry) string {
	id, _ := split(s.arena.at(e.ref, e.n))
	return view(id)
}

// rcptsOf is a view of the recipients of a live entry.
func (s *storage) rcptsOf(e *entry) string {
	_, r := split(s.arena.at(e.ref, e.n))
	return view(r)
}

// setRecord writes e's id and recipients.
func (s *storage) setRecord(e *entry, id string, rcpts []byte) {
	if e.n != 0 {
		s.arena.dead(e.n)
	}
	e.ref, e.n = s.arena.record(id, rcpts)
}

// setRcpts replaces e's recipients: in place when they are not longer.
func (s *storage) setRcpts(e *entry, rcpts []byte) {
	rec := s.arena.at(e.ref, e.n)
	id, old := split(rec)
	if len(rcpts) <= len(old) {
		copy(old, rcpts)
		shrink := uint32(len(old) - len(rcpts))
		s.arena.dead(shrink)
		e.n -= shrink
		return
	}
	m := e.n + uint32(len(rcpts)-len(old))
	if rec, ok := s.arena.grow(e.ref, e.n, m); ok {
		copy(rec[len(rec)-len(rcpts):], rcpts)
		e.n = m
		return
	}
	// The old record stays where it is while the new one is written.
	s.setRecord(e, view(id), rcpts)
}

// compact copies the live records into new chunks and frees the old.
func (s *storage) compact() {
	old := s.arena
	s.arena = arena{}
	for i := range s.slab.n {
		e := s.slab.at(i)
		if e.n == 0 {
			continue
		}
		rec := old.at(e.ref, e.n)
		pos, b := s.arena.alloc(len(rec))
		copy(b, rec)
		e.ref = pos
	}
	old.free()
}
