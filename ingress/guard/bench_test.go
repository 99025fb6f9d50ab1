package guard

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"testing"
)

// benchContent is a message of about size octets as a client sends it: a
// short header section and a body of 76-character lines (the length
// base64 and quoted-printable produce), every line ending in CRLF.
func benchContent(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: Alice <alice@example.org>\r\nTo: Bob <bob@example.test>\r\n")
	b.WriteString("Subject: benchmark\r\nMessage-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\n\r\n")
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	line := make([]byte, 78)
	for i := 0; b.Len() < size; i++ {
		for j := range 76 {
			line[j] = alphabet[(i*7+j)%len(alphabet)]
		}
		line[76], line[77] = '\r', '\n'
		b.Write(line)
	}
	return b.Bytes()
}

// benchSizes are the message sizes every content benchmark runs with.
var benchSizes = []struct {
	name string
	size int
}{{"4KB", 4 << 10}, {"5MB", 5 << 20}}

// readSize is how much go-smtp's bufio.Reader asks for at a time.
const readSize = 4096

// BenchmarkScannerData measures the Conn's check of DATA content, handed
// to the scanner in reads of readSize as go-smtp reads it.
func BenchmarkScannerData(b *testing.B) {
	for _, bs := range benchSizes {
		in := append(benchContent(bs.size), ".\r\n"...)
		b.Run(bs.name, func(b *testing.B) {
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
	for _, bs := range benchSizes {
		content := benchContent(bs.size)
		in := append([]byte("BDAT "+strconv.Itoa(len(content))+" LAST\r\n"), content...)
		b.Run(bs.name, func(b *testing.B) {
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
	for _, bs := range benchSizes {
		in := benchContent(bs.size)
		b.Run(bs.name, func(b *testing.B) {
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
