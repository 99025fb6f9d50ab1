package index

import "strings"

// interner stores each distinct string once and names it by a small id, so
// that a million jobs for a thousand domains hold a thousand domain strings.
// Ids are reference counted and reused, because deferral replies and
// senders come and go with the jobs that carry them. Id 0 is the empty
// string and is never counted. It is not safe for concurrent use; the
// index's lock guards it.
type interner struct {
	ids  map[string]uint32
	strs []string
	refs []uint32
	free []uint32
}

func newInterner() *interner {
	return &interner{ids: map[string]uint32{}, strs: []string{""}, refs: []uint32{0}}
}

// add returns the id of s and counts one more reference to it.
func (in *interner) add(s string) uint32 {
	if s == "" {
		return 0
	}
	if id, ok := in.ids[s]; ok {
		in.refs[id]++
		return id
	}
	// Keep our own copy: s may share the memory of an event being read.
	s = strings.Clone(s)
	var id uint32
	if n := len(in.free); n > 0 {
		id = in.free[n-1]
		in.free = in.free[:n-1]
		in.strs[id], in.refs[id] = s, 1
	} else {
		id = uint32(len(in.strs))
		in.strs = append(in.strs, s)
		in.refs = append(in.refs, 1)
	}
	in.ids[s] = id
	return id
}

// release drops one reference to id, forgetting the string at zero.
func (in *interner) release(id uint32) {
	if id == 0 || in.refs[id] == 0 {
		return
	}
	in.refs[id]--
	if in.refs[id] == 0 {
		delete(in.ids, in.strs[id])
		in.strs[id] = ""
		in.free = append(in.free, id)
	}
}

// replace releases old and adds s, returning the id of s.
func (in *interner) replace(old uint32, s string) uint32 {
	if in.strs[old] == s {
		return old
	}
	in.release(old)
	return in.add(s)
}

// lookup returns the id of s without counting a reference.
func (in *interner) lookup(s string) (uint32, bool) {
	if s == "" {
		return 0, true
	}
	id, ok := in.ids[s]
	return id, ok
}

func (in *interner) str(id uint32) string { return in.strs[id] }

// size is the number of ids ever handed out, the bound of any id.
func (in *interner) size() int { return len(in.strs) }
