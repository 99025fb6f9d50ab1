package smtpd

import (
	"io"
	"sync"
)

// chunkSize is the size of the pooled blocks a transaction's content is
// read into.
const chunkSize = 64 << 10

var chunkPool = sync.Pool{New: func() any { return new([chunkSize]byte) }}

// content holds a transaction's content while it is received, in pooled
// fixed-size blocks. A contiguous buffer grown by doubling (bytes.Buffer)
// allocated and zeroed about twice the message size for every message:
// for multi-megabyte messages clearing fresh memory was the ingress's
// largest cost. Release returns the blocks; a content must not be used
// after it.
type content struct {
	chunks []*[chunkSize]byte
	n      int
}

// Len is the number of bytes held.
func (c *content) Len() int { return c.n }

// Write appends p.
func (c *content) Write(p []byte) (int, error) {
	written := len(p)
	for len(p) > 0 {
		k := copy(c.tail(), p)
		c.n += k
		p = p[k:]
	}
	return written, nil
}

// ReadFrom appends everything r yields until EOF.
func (c *content) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		k, err := r.Read(c.tail())
		c.n += k
		total += int64(k)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// tail is the free space of the last block, adding a block when it is full.
func (c *content) tail() []byte {
	off := c.n % chunkSize
	if off == 0 && c.n/chunkSize == len(c.chunks) {
		c.chunks = append(c.chunks, chunkPool.Get().(*[chunkSize]byte))
	}
	return c.chunks[c.n/chunkSize][off:]
}

// Bytes returns a contiguous copy of the content.
func (c *content) Bytes() []byte {
	out := make([]byte, 0, c.n)
	for i := 0; i < c.n; i += chunkSize {
		out = append(out, c.chunks[i/chunkSize][:min(chunkSize, c.n-i)]...)
	}
	return out
}

// Reset empties the content, keeping its blocks for reuse.
func (c *content) Reset() { c.n = 0 }

// Reader reads the content from the start. It must not outlive the
// content's next Write, Reset or Release.
func (c *content) Reader() io.Reader { return &contentCursor{c: c} }

// Release returns the blocks to the pool.
func (c *content) Release() {
	for i, b := range c.chunks {
		chunkPool.Put(b)
		c.chunks[i] = nil
	}
	c.chunks, c.n = c.chunks[:0], 0
}

type contentCursor struct {
	c   *content
	off int
}

func (r *contentCursor) Read(p []byte) (int, error) {
	if r.off >= r.c.n {
		return 0, io.EOF
	}
	block := r.c.chunks[r.off/chunkSize][r.off%chunkSize:]
	k := copy(p, block[:min(len(block), r.c.n-r.off)])
	r.off += k
	return k, nil
}

// WriteTo writes the rest of the content to w without an intermediate
// buffer (io.Copy uses it).
func (r *contentCursor) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.off < r.c.n {
		block := r.c.chunks[r.off/chunkSize][r.off%chunkSize:]
		k, err := w.Write(block[:min(len(block), r.c.n-r.off)])
		r.off += k
		total += int64(k)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
