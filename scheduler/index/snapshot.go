package index

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
)

// A snapshot is the index as of one event: a restarted scheduler loads it
// and reads only the events stored after it, where a rebuild reads them
// all (two or more per job: about 8 s per million jobs on two cores, most
// of it the server delivering and the client parsing events). It holds
// what the index holds, not the events: the interned strings with their
// reference counts, then every live job (its fixed fields and its record
// of id and recipients), then the delay reservoir. Numbers are varints,
// little-endian where fixed; the format is versioned by its first line.
//
// The index lock is held for reading while a snapshot is written, so
// queries go on and events wait; written to JetStream it takes about a
// second per million jobs.

const snapshotMagic = "sluice queue index snapshot 1\n"

// entryWire is the size of an entry in a snapshot, without its record
// position (the record follows it).
const entryWire = 8 + 4*7 + 2*2 + 4

// WriteSnapshot writes the index to w and returns the stream sequence of
// the last event it holds.
func (x *Index) WriteSnapshot(w io.Writer) (uint64, error) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	bw := bufio.NewWriterSize(w, 256<<10)
	var buf [entryWire + binary.MaxVarintLen64]byte
	uv := func(v uint64) {
		n := binary.PutUvarint(buf[:], v)
		bw.Write(buf[:n])
	}
	bw.WriteString(snapshotMagic)
	uv(x.seq)
	for _, in := range []*interner{x.domains, x.senders, x.errs} {
		uv(uint64(len(in.strs)))
		for id, s := range in.strs {
			uv(uint64(in.refs[id]))
			uv(uint64(len(s)))
			bw.WriteString(s)
		}
	}
	uv(uint64(x.st.table.n))
	for i := range x.st.slab.n {
		e := x.st.slab.at(i)
		if e.n == 0 {
			continue
		}
		b := buf[:entryWire]
		binary.LittleEndian.PutUint64(b[0:], uint64(e.received))
		binary.LittleEndian.PutUint32(b[8:], e.next)
		binary.LittleEndian.PutUint32(b[12:], e.expires)
		binary.LittleEndian.PutUint32(b[16:], e.size)
		binary.LittleEndian.PutUint32(b[20:], e.domain)
		binary.LittleEndian.PutUint32(b[24:], e.sender)
		binary.LittleEndian.PutUint32(b[28:], e.lastErr)
		binary.LittleEndian.PutUint32(b[32:], e.n)
		binary.LittleEndian.PutUint16(b[36:], e.attempts)
		binary.LittleEndian.PutUint16(b[38:], e.jobs)
		b[40], b[41], b[42], b[43] = byte(e.state), byte(e.prev), e.class, e.reason
		bw.Write(b)
		bw.Write(x.st.arena.at(e.ref, e.n))
	}
	r := x.delays
	uv(uint64(len(r.at)))
	uv(uint64(r.next))
	full := uint64(0)
	if r.full {
		full = 1
	}
	uv(full)
	for i := range r.at {
		uv(uint64(r.at[i]))
		uv(uint64(r.delay[i]))
	}
	bw.WriteString(snapshotMagic)
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return x.seq, nil
}

// errSnapshot is a snapshot that cannot be read; the index stays empty.
var errSnapshot = errors.New("queue index snapshot is not readable")

// LoadSnapshot fills an empty index from a snapshot read from r. On error
// the index is left empty, ready to be rebuilt from the events.
func (x *Index) LoadSnapshot(r io.Reader) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.st.table.n != 0 || x.seq != 0 {
		return errors.New("queue index snapshot: the index is not empty")
	}
	if err := x.load(bufio.NewReaderSize(r, 256<<10)); err != nil {
		x.resetLocked()
		return fmt.Errorf("%w: %w", errSnapshot, err)
	}
	return nil
}

// reset empties the index.
func (x *Index) reset() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.resetLocked()
}

func (x *Index) resetLocked() {
	x.st.free()
	x.st.table.seed = maphash.MakeSeed()
	x.free = nil
	x.seq = 0
	x.domains, x.senders, x.errs = newInterner(), newInterner(), newInterner()
	x.delays = newReservoir(len(x.delays.at), x.delays.window)
}

func (x *Index) load(br *bufio.Reader) error {
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != snapshotMagic {
		return errors.New("not a snapshot of this version")
	}
	uv := func(limit uint64) (uint64, error) {
		v, err := binary.ReadUvarint(br)
		if err == nil && v > limit {
			err = fmt.Errorf("value %d beyond %d", v, limit)
		}
		return v, err
	}
	seq, err := uv(1<<63 - 1)
	if err != nil {
		return err
	}
	for _, in := range []*interner{x.domains, x.senders, x.errs} {
		n, err := uv(1 << 31)
		if err != nil || n == 0 {
			return errors.Join(errors.New("interned strings"), err)
		}
		in.strs, in.refs, in.free = make([]string, n), make([]uint32, n), nil
		clear(in.ids)
		for id := range in.strs {
			refs, err := uv(1<<32 - 1)
			if err != nil {
				return err
			}
			l, err := uv(1 << 20)
			if err != nil {
				return err
			}
			b := make([]byte, l)
			if _, err := io.ReadFull(br, b); err != nil {
				return err
			}
			in.strs[id], in.refs[id] = string(b), uint32(refs)
			switch {
			case id == 0:
				if l != 0 {
					return errors.New("interned id 0 is not the empty string")
				}
			case refs == 0:
				in.free = append(in.free, uint32(id))
			default:
				if _, dup := in.ids[in.strs[id]]; dup {
					return fmt.Errorf("string %q interned twice", in.strs[id])
				}
				in.ids[in.strs[id]] = uint32(id)
			}
		}
	}
	jobs, err := uv(1 << 31)
	if err != nil {
		return err
	}
	var b [entryWire]byte
	for range jobs {
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return err
		}
		e := entry{
			received: int64(binary.LittleEndian.Uint64(b[0:])),
			next:     binary.LittleEndian.Uint32(b[8:]),
			expires:  binary.LittleEndian.Uint32(b[12:]),
			size:     binary.LittleEndian.Uint32(b[16:]),
			domain:   binary.LittleEndian.Uint32(b[20:]),
			sender:   binary.LittleEndian.Uint32(b[24:]),
			lastErr:  binary.LittleEndian.Uint32(b[28:]),
			n:        binary.LittleEndian.Uint32(b[32:]),
			attempts: binary.LittleEndian.Uint16(b[36:]),
			jobs:     binary.LittleEndian.Uint16(b[38:]),
			state:    State(b[40]),
			prev:     State(b[41]),
			class:    b[42],
			reason:   b[43],
		}
		if e.n == 0 || e.n > 16<<20 || int(e.state) >= len(stateNames) || int(e.prev) >= len(stateNames) ||
			int(e.domain) >= x.domains.size() || int(e.sender) >= x.senders.size() || int(e.lastErr) >= x.errs.size() {
			return errors.New("job entry out of range")
		}
		pos, rec := x.st.arena.alloc(int(e.n))
		if _, err := io.ReadFull(br, rec); err != nil {
			return err
		}
		id, _ := split(rec)
		if len(id) == 0 || len(id) > len(rec) {
			return errors.New("job record without an id")
		}
		e.ref = pos
		_, dup, tag := x.st.find(view(id))
		if dup {
			return fmt.Errorf("job %q twice", id)
		}
		i := x.st.slab.grow()
		*x.st.slab.at(i) = e
		x.st.insert(i, tag)
	}
	n, err := uv(1 << 24)
	if err != nil || int(n) != len(x.delays.at) {
		return errors.Join(fmt.Errorf("delay samples %d, want %d", n, len(x.delays.at)), err)
	}
	next, err := uv(n - 1)
	if err != nil {
		return err
	}
	full, err := uv(1)
	if err != nil {
		return err
	}
	x.delays.next, x.delays.full = int(next), full == 1
	for i := range x.delays.at {
		at, err := uv(1<<64 - 1)
		if err != nil {
			return err
		}
		d, err := uv(1<<64 - 1)
		if err != nil {
			return err
		}
		x.delays.at[i], x.delays.delay[i] = int64(at), int64(d)
	}
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != snapshotMagic {
		return errors.New("snapshot is cut short")
	}
	x.seq = seq
	return nil
}
