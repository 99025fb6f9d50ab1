package guard

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"testing"

	"github.com/sluice-mta/sluice/ingress/internal/benchmsg"
)

// readSize is how much go-smtp's bufio.Reader asks for at a time.
const readSize = 4096

// BenchmarkScannerData measures the Conn's check of DATA content, handed
// to the scanner in reads of readSize as go-smtp reads it.
func BenchmarkScannerData(b *testing.B) {
	for _, bs := range benchmsg.Sizes {
		in := append(benchmsg.Content(bs.Size), ".\r\n"...)
		b.Run(bs.Name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				s := newScanner(1000)
				s.mode = modeData
				for rest := in; len(rest) > 0; {
					k := min(readSize, len(rest))
					if _, r := s.scan(rest[:k]); r != 0 {
						b.Fatal(r)
					}
					rest = rest[k:]
				}
				if s.mode != modeCommand {
					b.Fatal("end of data not seen")
				}
			}
		})
	}
}

// BenchmarkScannerBDAT measures the check of one BDAT LAST chunk.
func BenchmarkScannerBDAT(b *testing.B) {
	for _, bs := range benchmsg.Sizes {
		content := benchmsg.Content(bs.Size)
		in := append([]byte("BDAT "+strconv.Itoa(len(content))+" LAST\r\n"), content...)
		b.Run(bs.Name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				s := newScanner(1000)
				for rest := in; len(rest) > 0; {
					k := min(readSize, len(rest))
					if _, r := s.scan(rest[:k]); r != 0 {
						b.Fatal(r)
					}
					rest = rest[k:]
				}
				if s.mode != modeCommand {
					b.Fatal("end of chunk not seen")
				}
			}
		})
	}
}

// BenchmarkContentReader measures the session's check of the content
// go-smtp hands over, read in pieces of readSize.
func BenchmarkContentReader(b *testing.B) {
	for _, bs := range benchmsg.Sizes {
		in := benchmsg.Content(bs.Size)
		b.Run(bs.Name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			buf := make([]byte, readSize)
			for b.Loop() {
				r := NewContentReader(bytes.NewReader(in), ContentLimits{MaxLineLength: 1000, MaxHeaderBytes: 64 << 10})
				n := 0
				for {
					k, err := r.Read(buf)
					n += k
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				if n != len(in) {
					b.Fatal(fmt.Sprintf("read %d of %d octets", n, len(in)))
				}
			}
		})
	}
}
