package smtpconn

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// scanPerByte is contentState.scan as it was, looking at every octet on
// its own; the scan that skips to the next CR must agree with it.
func (s *contentState) scanPerByte(b []byte) (int, bool) {
	for i, ch := range b {
		switch s.st {
		case csLineStart:
			switch ch {
			case '.':
				s.st = csDot
			case '\r':
				s.st = csCR
			default:
				s.st = csText
			}
		case csDot:
			if ch == '\r' {
				s.st = csDotCR
			} else {
				s.st = csText
			}
		case csDotCR:
			if ch == '\n' {
				return i + 1, true
			}
			s.st = csText
		case csCR:
			if ch == '\n' {
				s.st = csLineStart
			} else {
				s.st = csText
			}
		case csText:
			if ch == '\r' {
				s.st = csCR
			}
		}
	}
	return len(b), false
}

// compareContentScans scans in as a Conn in content mode does, in reads
// cut where rnd says, with both scans, and fails at the first difference
// in where content ends or in the state.
func compareContentScans(t *testing.T, in []byte, rnd *rand.Rand) {
	t.Helper()
	var fast, slow contentState
	for len(in) > 0 {
		k := 1 + rnd.IntN(8)
		if rnd.IntN(4) == 0 {
			k = 1 + rnd.IntN(2*len(in))
		}
		b := in[:min(k, len(in))]
		n, done := fast.scan(b)
		wantN, wantDone := slow.scanPerByte(b)
		if n != wantN || done != wantDone || fast != slow {
			t.Fatalf("%q: scan = %d, %v, state %d; per octet %d, %v, state %d", b, n, done, fast.st, wantN, wantDone, slow.st)
		}
		in = in[n:]
		if done {
			// Command lines follow; the next DATA starts afresh.
			fast, slow = contentState{}, contentState{}
		}
	}
}

func TestContentScanMatchesPerOctet(t *testing.T) {
	tokens := []string{"a", "xyz", ".", "..", "\r", "\n", "\r\n", "\r\n.\r\n", ".\r\n", "\r.\r\n", "\n.\n"}
	rnd := rand.New(rand.NewPCG(5, 6))
	for range 20000 {
		var in []byte
		for range rnd.IntN(40) {
			if rnd.IntN(8) == 0 {
				in = append(in, bytes.Repeat([]byte{'x'}, rnd.IntN(300))...)
				continue
			}
			in = append(in, tokens[rnd.IntN(len(tokens))]...)
		}
		compareContentScans(t, in, rnd)
	}
}

// FuzzContentScan compares the end-of-data search with the per-octet one
// on any content, split into reads as seed says.
func FuzzContentScan(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"), uint64(1))
	f.Add([]byte("a\r\r\n.\r\nb\n.\n\r\n..\r\n.\r\n"), uint64(2))
	f.Add([]byte(".\r\n"), uint64(3))
	f.Fuzz(func(t *testing.T, in []byte, seed uint64) {
		compareContentScans(t, in, rand.New(rand.NewPCG(seed, seed)))
	})
}
