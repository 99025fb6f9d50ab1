package guard

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
)

// runScanner feeds in to a scanner in chunks of size n, playing the
// server's part where the scanner waits for a reply: DATA is answered 354
// and STARTTLS 220. It returns the first violation and the line kinds.
func runScanner(in []byte, n, maxLine int) (Reason, []kind) {
	s := newScanner(maxLine)
	var kinds []kind
	var held []byte
	for len(in) > 0 || len(held) > 0 {
		var b []byte
		if len(held) > 0 {
			b, held = held, nil
		} else {
			k := min(n, len(in))
			b, in = in[:k], in[k:]
		}
		used, r := s.scan(b)
		kinds = append(kinds, s.done...)
		if r != 0 {
			return r, kinds
		}
		switch s.stop {
		case kindData:
			s.mode = modeData
		case kindStartTLS:
			s.mode = modeOpaque
		}
		if used < len(b) {
			held = append([]byte(nil), b[used:]...)
		}
	}
	return 0, kinds
}

func TestScanner(t *testing.T) {
	const ok = Reason(0)
	for _, tc := range []struct {
		name string
		in   string
		want Reason
	}{
		{"clean dialogue", "EHLO a.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n", ok},
		{"bare LF in a command", "EHLO a.example\nMAIL FROM:<a@b.example>\r\n", ReasonBareLF},
		{"bare CR in a command", "EHLO a\r.example\r\n", ReasonBareCR},
		{"LF CR", "NOOP\n\r", ReasonBareLF},
		{"CR CR LF", "NOOP\r\r\n", ReasonBareCR},
		{`smuggling \n.\n`, "DATA\r\nbody\n.\nMAIL FROM:<x@y.example>\r\n", ReasonBareLF},
		{`smuggling \n.\r\n`, "DATA\r\nbody\n.\r\nMAIL FROM:<x@y.example>\r\n", ReasonBareLF},
		{`smuggling \r\n.\n`, "DATA\r\nbody\r\n.\nMAIL FROM:<x@y.example>\r\n", ReasonBareLF},
		{`smuggling \r.\r`, "DATA\r\nbody\r.\rMAIL FROM:<x@y.example>\r\n", ReasonBareCR},
		{`smuggling \r\n.\r`, "DATA\r\nbody\r\n.\rMAIL FROM:<x@y.example>\r\n", ReasonBareCR},
		{`smuggling \r.\r\n`, "DATA\r\nbody\r.\r\nMAIL FROM:<x@y.example>\r\n", ReasonBareCR},
		{"BDAT chunk split between CR and LF", "BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd", ok},
		{"BDAT chunk content is not commands", "BDAT 15\r\nDATA\r\n.\r\nBDAT 9\r\nQUIT\r\n", ok},
		{"BDAT bare LF in a chunk", "BDAT 4\r\na\nbc", ReasonBareLF},
		{"BDAT bare CR across chunks", "BDAT 3\r\nab\rBDAT 1 LAST\r\nx", ReasonBareCR},
		{"BDAT LAST ends in CR", "BDAT 3 LAST\r\nab\r", ReasonBareCR},
		{"BDAT empty LAST after CR", "BDAT 3\r\nab\rBDAT 0 LAST\r\n", ReasonBareCR},
		{"BDAT CR then another command", "BDAT 3\r\nab\rNOOP\r\n", ReasonBareCR},
		{"malformed BDAT is a command line", "BDAT x\r\nab\n", ReasonBareLF},
		{"line at the limit", "NOOP " + string(bytes.Repeat([]byte("x"), 1000-7)) + "\r\n", ok},
		{"line over the limit", "NOOP " + string(bytes.Repeat([]byte("x"), 1000-6)) + "\r\n", ReasonLineTooLong},
		{"data line over the limit", "DATA\r\n" + string(bytes.Repeat([]byte("x"), 1000)) + "\r\n", ReasonLineTooLong},
		{"chunk line over the limit", "BDAT 1001\r\n" + string(bytes.Repeat([]byte("x"), 1001)), ReasonLineTooLong},
		{"after STARTTLS anything goes", "STARTTLS\r\n\x16\x03\x01\n\r\n\r", ok},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The verdict must not depend on how the octets arrive.
			for _, n := range []int{1, 2, 3, 7, len(tc.in)} {
				got, _ := runScanner([]byte(tc.in), n, 1000)
				if got != tc.want {
					t.Fatalf("chunks of %d: %v, want %v", n, got, tc.want)
				}
			}
		})
	}
}

func TestScannerKinds(t *testing.T) {
	in := "EHLO a\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n..\r\n.\r\nBDAT 4\r\nab\r\nbdat  0   last\r\nquit\r\nSTARTTLS\r\n"
	_, got := runScanner([]byte(in), 5, 1000)
	want := []kind{kindOther, kindMail, kindRcpt, kindData, kindDataEnd, kindBDAT, kindBDATLast, kindChunksDone, kindQuit, kindStartTLS}
	if !slices.Equal(got, want) {
		t.Errorf("kinds %v, want %v", got, want)
	}
}

func TestContentReader(t *testing.T) {
	for _, tc := range []struct {
		in        string
		maxHeader int64
		want      Reason
	}{
		{"Subject: x\r\n\r\nbody\r\n", 0, 0},
		{"Subject: x\r\n\r\nbody", 0, 0},
		{"Subject: x\r\n\r\nbo\ndy\r\n", 0, ReasonBareLF},
		{"Subject: x\r\n\r\nbody\r", 0, ReasonBareCR},
		{"Subject: x\r\n\r\n\r.\r", 0, ReasonBareCR},
		{"Subject: 0123456789\r\n\r\nbody\r\n", 20, ReasonHeaderTooLarge},
		{"Subject: 0123456789\r\n\r\n" + string(bytes.Repeat([]byte("x"), 100)) + "\r\n", 30, 0},
		{string(bytes.Repeat([]byte("x"), 999)) + "\r\n", 0, ReasonLineTooLong},
		// Lines that are not header fields start the body.
		{"a\r\n" + string(bytes.Repeat([]byte("a\r\n"), 100)), 20, 0},
		{"Subject: x\r\nno colon here\r\n" + string(bytes.Repeat([]byte("X-A: b\r\n"), 10)), 20, 0},
		// Folded lines and many fields are header.
		{"Subject: x\r\n" + string(bytes.Repeat([]byte(" folded\r\n"), 10)), 50, ReasonHeaderTooLarge},
		{string(bytes.Repeat([]byte("X-A: b\r\n"), 10)) + "\r\nbody", 50, ReasonHeaderTooLarge},
		{string(bytes.Repeat([]byte("X-A: b\r\n"), 10)) + "\r\nbody", 80, 0},
	} {
		r := NewContentReader(bytes.NewReader([]byte(tc.in)), ContentLimits{MaxLineLength: 1000, MaxHeaderBytes: tc.maxHeader})
		var out bytes.Buffer
		_, err := out.ReadFrom(r)
		var got Reason
		if v, ok := err.(*Violation); ok {
			got = v.Reason
			if !v.Content {
				t.Errorf("%q: violation without Content", tc.in)
			}
		} else if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		if got != tc.want {
			t.Errorf("%q: %v, want %v", tc.in, got, tc.want)
		}
		if got == 0 && out.String() != tc.in {
			t.Errorf("%q: read %q", tc.in, out.String())
		}
	}
}

func ExampleReason() {
	fmt.Println(ReasonBareLF, ReasonTooManyFromClient)
	// Output: bare_lf too_many_from_client
}
