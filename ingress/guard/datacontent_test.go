package guard_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/ingress/guard"
)

// TestDataContentAsGoSMTP sends the same transactions to a server whose
// sessions read DATA content through guard.Content and to one whose
// sessions read it through go-smtp's own reader, and wants the same
// replies and the same stored content from both, with the command
// pipelined after the content answered in both: dot-stuffed lines, an
// empty message, dots where the reader's buffer ends, and messages at and
// around go-smtp's MaxMessageBytes.
func TestDataContentAsGoSMTP(t *testing.T) {
	const max = 200 << 10
	big := func(n int, line string) string {
		var b strings.Builder
		b.WriteString("Subject: big\r\n\r\n")
		for b.Len() < n {
			b.WriteString(line)
		}
		return b.String()
	}
	// exact is a message whose content (without the end line and with
	// dot-stuffing undone) has n octets.
	exact := func(n int) string {
		var b strings.Builder
		b.WriteString("Subject: x\r\n\r\n")
		for b.Len()+100 <= n {
			b.WriteString(strings.Repeat("a", 98) + "\r\n")
		}
		if k := n - b.Len(); k >= 2 {
			b.WriteString(strings.Repeat("b", k-2) + "\r\n")
		} else {
			b.WriteString(strings.Repeat("c", k))
		}
		return b.String()
	}
	contents := []string{
		"Subject: one\r\n\r\nbody\r\n",
		"",
		"\r\n",
		"Subject: dots\r\n\r\n..\r\n...\r\n..x\r\n.y\r\n. \r\nend\r\n",
		"Subject: t\r\n\r\nno final newline",
		big(150<<10, "..a dot-stuffed line that starts with two dots\r\n"),
		big(190<<10, "x\r\n..\r\n"),
		big(70<<10, strings.Repeat("y", 997)+"\r\n"),
		exact(max - 1),
		exact(max),
		exact(max + 1),
		big(400<<10, "too large\r\n"),
	}
	type outcome struct {
		replies []string
		msgs    []string
	}
	run := func(fast bool) (outcome, int) {
		s := startServerOn(t, &server{fast: fast, maxBytes: max}, func(o *guard.Options) { o.MaxLineLength = 1000 })
		var out outcome
		for _, content := range contents {
			c := dial(t, s.addr)
			c.open()
			// The next command comes in the same write as the content.
			c.send(content + func() string {
				if content != "" && !strings.HasSuffix(content, "\r\n") {
					return "\r\n"
				}
				return ""
			}() + ".\r\nNOOP\r\n")
			r1, r2 := c.reply(), c.reply()
			out.replies = append(out.replies, r1, r2)
			c.send("QUIT\r\n")
			c.expect("221 ")
		}
		out.msgs = s.messages()
		s.mu.Lock()
		defer s.mu.Unlock()
		return out, s.fastUsed
	}
	slow, _ := run(false)
	fast, used := run(true)
	if used != len(contents) {
		t.Errorf("guard.Content read %d of %d messages", used, len(contents))
	}
	if len(slow.msgs) != len(fast.msgs) {
		t.Fatalf("stored %d messages through guard.Content, %d through go-smtp", len(fast.msgs), len(slow.msgs))
	}
	for i := range slow.msgs {
		if slow.msgs[i] != fast.msgs[i] {
			t.Errorf("message %d differs: %d octets through guard.Content, %d through go-smtp", i, len(fast.msgs[i]), len(slow.msgs[i]))
		}
	}
	if fmt.Sprint(slow.replies) != fmt.Sprint(fast.replies) {
		t.Errorf("replies through guard.Content:\n%q\nthrough go-smtp:\n%q", fast.replies, slow.replies)
	}
	// The test would pass vacuously if nothing were stored or refused.
	if len(slow.msgs) < 8 || !strings.Contains(fmt.Sprint(slow.replies), "552") {
		t.Errorf("stored %d messages, replies %q: want most stored and the too large refused", len(slow.msgs), slow.replies)
	}
	if fast.msgs[3] != "Subject: dots\r\n\r\n.\r\n..\r\n.x\r\ny\r\n \r\nend\r\n" {
		t.Errorf("dot-stuffing: stored %q", fast.msgs[3])
	}
}
