package guard

import (
	"bytes"
	"io"
	"testing"
)

// referenceVerdict is the rule for a stream without BDAT, DATA or
// STARTTLS (whose handling depends on the dialogue): every CR is followed
// by LF, every LF preceded by CR, and no line is longer than maxLine.
func referenceVerdict(b []byte, maxLine int) Reason {
	line := 0
	for i, c := range b {
		switch {
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			return ReasonBareLF
		case c == '\r' && i+1 < len(b) && b[i+1] != '\n':
			return ReasonBareCR
		}
		line++
		// The line's CR and LF, when still to come, count too.
		need := line
		switch {
		case c == '\n':
		case c == '\r':
			need++
		default:
			need += 2
		}
		if need > maxLine {
			return ReasonLineTooLong
		}
		if c == '\n' {
			line = 0
		}
	}
	return 0
}

func dialogueWords(b []byte) bool {
	u := bytes.ToUpper(b)
	return bytes.Contains(u, []byte("BDAT")) || bytes.Contains(u, []byte("DATA")) || bytes.Contains(u, []byte("STARTTLS"))
}

// FuzzScanner checks that the verdict on a client's stream does not depend
// on how the octets are split into reads, and matches the plain rule when
// the dialogue does not change what the octets mean.
func FuzzScanner(f *testing.F) {
	f.Add([]byte("EHLO a\r\nMAIL FROM:<a@b.c>\r\n"), uint8(3))
	f.Add([]byte("DATA\r\nx\n.\nQUIT\r\n"), uint8(1))
	f.Add([]byte("BDAT 3\r\nab\rBDAT 1 LAST\r\n\n"), uint8(5))
	f.Add([]byte("NOOP\r\r\n"), uint8(2))
	f.Fuzz(func(t *testing.T, in []byte, split uint8) {
		const maxLine = 64
		whole, kinds := runScanner(in, len(in)+1, maxLine)
		for _, n := range []int{1, int(split%16) + 1} {
			got, k := runScanner(in, n, maxLine)
			if got != whole {
				t.Fatalf("reads of %d: %v, whole: %v", n, got, whole)
			}
			if whole == 0 && len(k) != len(kinds) {
				t.Fatalf("reads of %d: kinds %v, whole: %v", n, k, kinds)
			}
		}
		if !dialogueWords(in) {
			if want := referenceVerdict(in, maxLine); whole != want {
				t.Fatalf("%q: %v, want %v", in, whole, want)
			}
		}
	})
}

// FuzzContentReader compares the content check with the plain rule and
// checks that accepted content is passed on unchanged.
func FuzzContentReader(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody\r\n"))
	f.Add([]byte("Subject: x\r\n\r\nbo\ndy\r\n"))
	f.Add([]byte("a\r.\r"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		_, err := io.Copy(&out, NewContentReader(bytes.NewReader(in), ContentLimits{MaxLineLength: 100}))
		want := referenceVerdict(in, 100)
		if want == 0 && len(in) > 0 && in[len(in)-1] == '\r' {
			want = ReasonBareCR
		}
		var got Reason
		if v, ok := err.(*Violation); ok {
			got = v.Reason
		} else if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%q: %v, want %v", in, got, want)
		}
		if got == 0 && !bytes.Equal(out.Bytes(), in) {
			t.Fatalf("read %q, want %q", out.Bytes(), in)
		}
	})
}
