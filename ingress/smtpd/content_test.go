package smtpd

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

// TestContentKeepsEveryByte writes and reads content of sizes around the
// block size through every path (ReadFrom with short reads, Write, Reader
// with small reads and WriteTo, Bytes) and compares it with the input.
func TestContentKeepsEveryByte(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 4096, chunkSize - 1, chunkSize, chunkSize + 1, 3*chunkSize + 17, 5 << 20} {
		in := make([]byte, n)
		for i := range in {
			in[i] = byte(rng.UintN(256))
		}
		var c content
		if _, err := c.ReadFrom(iotest.HalfReader(bytes.NewReader(in))); err != nil {
			t.Fatal(err)
		}
		if c.Len() != n {
			t.Fatalf("n=%d: Len %d", n, c.Len())
		}
		if !bytes.Equal(c.Bytes(), in) {
			t.Fatalf("n=%d: Bytes differ from the input", n)
		}
		small, err := io.ReadAll(iotest.OneByteReader(c.Reader()))
		if n <= 1<<20 && (err != nil || !bytes.Equal(small, in)) {
			t.Fatalf("n=%d: byte-wise Reader differs (err %v)", n, err)
		}
		var out bytes.Buffer
		if k, err := io.Copy(&out, c.Reader()); err != nil || k != int64(n) || !bytes.Equal(out.Bytes(), in) {
			t.Fatalf("n=%d: WriteTo gave %d bytes, err %v", n, k, err)
		}
		// Reset and Write reuse the blocks.
		c.Reset()
		head := []byte("Authentication-Results: x\r\n")
		c.Write(head)
		c.Write(in)
		if !bytes.Equal(c.Bytes(), append(append([]byte{}, head...), in...)) {
			t.Fatalf("n=%d: content after Reset and Write differs", n)
		}
		c.Release()
		if c.Len() != 0 || len(c.chunks) != 0 {
			t.Fatalf("n=%d: Release left %d bytes in %d blocks", n, c.Len(), len(c.chunks))
		}
	}
}
