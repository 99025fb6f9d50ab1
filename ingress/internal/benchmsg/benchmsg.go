// Package benchmsg makes the message content the ingress benchmarks feed
// through its layers, so every layer is measured on the same octets.
package benchmsg

import "bytes"

// Content is a message of about size octets as a client sends it: a short
// header section and a body of 76-character lines (the length base64 and
// quoted-printable produce), every line ending in CRLF.
func Content(size int) []byte {
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

// Sizes are the message sizes the content benchmarks run with.
var Sizes = []struct {
	Name string
	Size int
}{{"4KB", 4 << 10}, {"5MB", 5 << 20}}
