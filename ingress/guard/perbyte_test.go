package guard

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
)

// This file keeps the octet-at-a-time implementations the scanner and the
// ContentReader had before they learned to skip the octets between line
// endings, and checks that both still decide exactly as those did: the
// same verdict after the same read, the same lines, the same state.

// scanPerByte is scan as it was, looking at every octet on its own.
func (s *scanner) scanPerByte(b []byte) (n int, r Reason) {
	s.done = s.done[:0]
	s.stop = kindOther
	for i := 0; i < len(b); {
		switch s.mode {
		case modeOpaque:
			return len(b), 0
		case modeChunk:
			take := int64(len(b) - i)
			if take > s.chunkLeft {
				take = s.chunkLeft
			}
			for _, c := range b[i : i+int(take)] {
				if r := s.content.push(c, s.maxLine); r != 0 {
					return 0, r
				}
			}
			i += int(take)
			s.chunkLeft -= take
			if s.chunkLeft == 0 {
				if r := s.endChunk(); r != 0 {
					return 0, r
				}
			}
			continue
		}
		c := b[i]
		i++
		ended := s.cmd.cr && c == '\n'
		if r := s.cmd.push(c, s.maxLine); r != 0 {
			return 0, r
		}
		if !ended {
			// Data lines only need their first octets (the dot line).
			if len(s.line) < s.maxLine && (s.mode == modeCommand || len(s.line) < 2) {
				s.line = append(s.line, c)
			}
			continue
		}
		line := bytes.TrimSuffix(s.line, []byte{'\r'})
		s.line = s.line[:0]
		if s.mode == modeData {
			if len(line) == 1 && line[0] == '.' {
				s.mode = modeCommand
				s.done = append(s.done, kindDataEnd)
			}
			continue
		}
		k, r := s.command(line)
		if r != 0 {
			return 0, r
		}
		s.done = append(s.done, k)
		if s.mode == modeChunk && s.chunkLeft == 0 {
			if r := s.endChunk(); r != 0 {
				return 0, r
			}
		}
		if k == kindData || k == kindStartTLS {
			s.stop = k
			return i, 0
		}
	}
	return len(b), 0
}

// readPerByte is ContentReader.Read as it was, pushing every octet.
func (c *ContentReader) readPerByte(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(b)
	for _, o := range b[:n] {
		if r := c.push(o); r != 0 {
			c.err = &Violation{Reason: r, Content: true}
			return 0, c.err
		}
	}
	if err == io.EOF && c.p.cr {
		c.err = &Violation{Reason: ReasonBareCR, Content: true}
		return 0, c.err
	}
	return n, err
}

// tokens are what random client streams are made of: the octets and
// lines that change the scanners' states, and runs of ordinary octets.
var tokens = []string{
	"a", "xyz", ".", "..", "\r", "\n", "\r\n", "\r\n.\r\n", " ", "\t", ":", "\x00", "\xff",
	"Subject: ", "X-A:", " folded", "DATA\r\n", "BDAT 1\r\n", "BDAT 5\r\n", "BDAT 3 LAST\r\n",
	"bdat 0 last\r\n", "BDAT x\r\n", "NOOP\r\n", "MAIL FROM:<a@b.c>\r\n", "STARTTLS\r\n",
}

// randomStream returns a client stream of up to n tokens, some of them
// runs of up to 300 ordinary octets, to cross the line limits.
func randomStream(rnd *rand.Rand, n int) []byte {
	var b []byte
	for range rnd.IntN(n + 1) {
		if rnd.IntN(8) == 0 {
			b = append(b, bytes.Repeat([]byte{'x'}, rnd.IntN(300))...)
			continue
		}
		b = append(b, tokens[rnd.IntN(len(tokens))]...)
	}
	return b
}

// randomSplit cuts b into reads: mostly small ones, to put read
// boundaries everywhere, sometimes large.
func randomSplit(rnd *rand.Rand, b []byte) [][]byte {
	var parts [][]byte
	for len(b) > 0 {
		n := 1 + rnd.IntN(8)
		if rnd.IntN(4) == 0 {
			n = 1 + rnd.IntN(2*len(b))
		}
		n = min(n, len(b))
		parts = append(parts, b[:n])
		b = b[n:]
	}
	return parts
}

// maxLines are the line limits the comparisons run with: tiny ones, where
// every line is too long, and ordinary ones.
var maxLines = []int{1, 2, 3, 4, 7, 16, 64, 1000}

// compareScanners feeds the reads to a scanner and to the per-octet one,
// playing the server as runScanner does, and fails at the first
// difference in what they return or, while there is no violation, in
// their state.
func compareScanners(t *testing.T, reads [][]byte, maxLine int) {
	t.Helper()
	fast, slow := newScanner(maxLine), newScanner(maxLine)
	var held []byte
	for call := 0; len(reads) > 0 || len(held) > 0; call++ {
		var b []byte
		if len(held) > 0 {
			b, held = held, nil
		} else {
			b, reads = reads[0], reads[1:]
		}
		n, r := fast.scan(b)
		wantN, wantR := slow.scanPerByte(b)
		if n != wantN || r != wantR || fast.stop != slow.stop || !slices.Equal(fast.done, slow.done) {
			t.Fatalf("maxLine %d, read %d %q: scan = %d, %v, stop %v, done %v; per octet %d, %v, stop %v, done %v",
				maxLine, call, b, n, r, fast.stop, fast.done, wantN, wantR, slow.stop, slow.done)
		}
		if r != 0 {
			return // the connection is refused: the state no longer matters
		}
		if got, want := scannerState(fast), scannerState(slow); got != want {
			t.Fatalf("maxLine %d, after read %d %q: state %s, per octet %s", maxLine, call, b, got, want)
		}
		switch fast.stop {
		case kindData:
			fast.mode, slow.mode = modeData, modeData
		case kindStartTLS:
			return // opaque from here on
		}
		if n < len(b) {
			held = b[n:]
		}
	}
}

func scannerState(s *scanner) string {
	return fmt.Sprintf("mode %d cmd %+v content %+v line %q chunk %d last %v",
		s.mode, s.cmd, s.content, s.line, s.chunkLeft, s.chunkLast)
}

// compareContentReaders reads the same reads through a ContentReader and
// through the per-octet one and fails at the first difference in what a
// read returns or, while there is no violation, in their state.
func compareContentReaders(t *testing.T, reads [][]byte, l ContentLimits) {
	t.Helper()
	fast := NewContentReader(&piecesReader{pieces: slices.Clone(reads)}, l)
	slow := NewContentReader(&piecesReader{pieces: slices.Clone(reads)}, l)
	buf, want := make([]byte, 512), make([]byte, 512)
	for call := 0; ; call++ {
		n, err := fast.Read(buf)
		wantN, wantErr := slow.readPerByte(want)
		if n != wantN || !bytes.Equal(buf[:n], want[:wantN]) || !sameError(err, wantErr) {
			t.Fatalf("limits %+v, read %d: %d %q, %v; per octet %d %q, %v", l, call, n, buf[:n], err, wantN, want[:wantN], wantErr)
		}
		if err != nil {
			return
		}
		if got, want := contentState(fast), contentState(slow); got != want {
			t.Fatalf("limits %+v, after read %d %q: state %s, per octet %s", l, call, buf[:n], got, want)
		}
	}
}

func contentState(c *ContentReader) string {
	return fmt.Sprintf("plane %+v header %d field %d body %v", c.p, c.header, c.field, c.inBody)
}

func sameError(a, b error) bool {
	var va, vb *Violation
	if errors.As(a, &va) && errors.As(b, &vb) {
		return *va == *vb
	}
	return a == b
}

// piecesReader returns one piece per Read (or what fits of it), then EOF.
type piecesReader struct {
	pieces [][]byte
}

func (r *piecesReader) Read(b []byte) (int, error) {
	if len(r.pieces) == 0 {
		return 0, io.EOF
	}
	n := copy(b, r.pieces[0])
	if r.pieces[0] = r.pieces[0][n:]; len(r.pieces[0]) == 0 {
		r.pieces = r.pieces[1:]
	}
	return n, nil
}

func TestScannerMatchesPerOctet(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		in := randomStream(rnd, 40)
		compareScanners(t, randomSplit(rnd, in), maxLines[rnd.IntN(len(maxLines))])
	}
}

func TestContentReaderMatchesPerOctet(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		in := randomStream(rnd, 40)
		l := ContentLimits{MaxLineLength: []int{0, 1, 2, 3, 4, 16, 100, 1000}[rnd.IntN(8)]}
		if rnd.IntN(2) == 0 {
			l.MaxHeaderBytes = int64(rnd.IntN(200))
		}
		compareContentReaders(t, randomSplit(rnd, in), l)
	}
}

// TestSkipValueTies checks the case the random streams rarely hit: a run
// of a header value that crosses the line limit and the header limit at
// the same octet, or one a single octet before the other.
func TestSkipValueTies(t *testing.T) {
	value := "Subject: " + string(bytes.Repeat([]byte("v"), 40)) + "\r\n\r\n"
	for maxLine := 30; maxLine <= 60; maxLine++ {
		for maxHeader := int64(25); maxHeader <= 60; maxHeader++ {
			l := ContentLimits{MaxLineLength: maxLine, MaxHeaderBytes: maxHeader}
			compareContentReaders(t, [][]byte{[]byte(value)}, l)
			compareContentReaders(t, [][]byte{[]byte(value[:12]), []byte(value[12:])}, l)
		}
	}
}

// FuzzScannerPerOctet compares the scanner with the per-octet one on any
// stream, split into reads as seed says, with a line limit of 1 to 256.
func FuzzScannerPerOctet(f *testing.F) {
	f.Add([]byte("EHLO a\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"), uint64(1), uint8(63))
	f.Add([]byte("BDAT 3\r\nab\rBDAT 1 LAST\r\n\n"), uint64(2), uint8(7))
	f.Add([]byte("DATA\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n.\r\n"), uint64(3), uint8(15))
	f.Add([]byte("DATA\r\nab\ncd\r\n.\r\n"), uint64(4), uint8(255))
	f.Fuzz(func(t *testing.T, in []byte, seed uint64, maxLine uint8) {
		rnd := rand.New(rand.NewPCG(seed, seed))
		compareScanners(t, randomSplit(rnd, in), int(maxLine)+1)
	})
}

// FuzzContentReaderPerOctet compares the ContentReader with the per-octet
// one on any content, split into reads as seed says.
func FuzzContentReaderPerOctet(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody\r\n"), uint64(1), uint8(100), uint8(0))
	f.Add([]byte("Subject: 0123456789\r\n folded\r\n\r\nbo\ndy\r\n"), uint64(2), uint8(20), uint8(30))
	f.Add([]byte("a\r.\r"), uint64(3), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, seed uint64, maxLine, maxHeader uint8) {
		rnd := rand.New(rand.NewPCG(seed, seed))
		compareContentReaders(t, randomSplit(rnd, in), ContentLimits{MaxLineLength: int(maxLine), MaxHeaderBytes: int64(maxHeader)})
	})
}
