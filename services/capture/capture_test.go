package capture

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestCapturesAndScriptsReplies(t *testing.T) {
	dir := t.TempDir()
	s, err := Listen("127.0.0.1:0", Options{Dir: dir, Rcpt: func(rcpt string, seen int) *smtp.SMTPError {
		if rcpt == "later@x.test" && seen == 0 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "try later"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = send(s.Addr, "later@x.test", "Subject: 1\r\n\r\nhi\r\n")
	var se *smtp.SMTPError
	if err == nil || !asSMTP(err, &se) || se.Code != 451 {
		t.Fatalf("first attempt: want 451, got %v", err)
	}
	if err := send(s.Addr, "later@x.test", "Subject: 2\r\n\r\nhi\r\n"); err != nil {
		t.Fatal(err)
	}
	ms, err := s.Wait(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ms[0].From != "a@x.test" || ms[0].To[0] != "later@x.test" || !strings.Contains(string(ms[0].Data), "Subject: 2") {
		t.Fatalf("captured %+v", ms[0])
	}
	// The envelope is saved next to the message.
	envs, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(envs) != 1 {
		t.Fatalf("%d envelope files, want 1", len(envs))
	}
	b, err := os.ReadFile(envs[0])
	if err != nil {
		t.Fatal(err)
	}
	var env Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatal(err)
	}
	if env.From != "a@x.test" || len(env.To) != 1 || env.To[0] != "later@x.test" || env.Helo != "localhost" ||
		!strings.HasPrefix(env.Client, "127.0.0.1:") || env.TLS != "" || env.Size != len(ms[0].Data) || env.Received.IsZero() {
		t.Fatalf("envelope %+v", env)
	}
	if data, err := os.ReadFile(filepath.Join(dir, env.File)); err != nil || !bytes.Equal(data, ms[0].Data) {
		t.Fatalf("message file %s named by the envelope: %v", env.File, err)
	}
}

// With Forget what arrives is in the files and OnMessage alone: counted,
// written exactly, handed over whole, and not kept in memory.
func TestForgetKeepsNothingInMemory(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var handed []Message
	s, err := Listen("127.0.0.1:0", Options{Dir: dir, Forget: true, OnMessage: func(m Message) {
		mu.Lock()
		handed = append(handed, m)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 16<<10)
	sent := []string{"Subject: 1\r\n\r\nhi\r\n", big, "Subject: 3\r\n\r\nbye\r\n"}
	for _, data := range sent {
		if err := send(s.Addr, "r@x.test", data); err != nil {
			t.Fatal(err)
		}
	}
	if n, ms := s.Count(), s.Messages(); n != 3 || len(ms) != 0 {
		t.Fatalf("count %d and %d messages in memory; want 3 and none", n, len(ms))
	}
	mu.Lock()
	if len(handed) != len(sent) {
		t.Fatalf("OnMessage saw %d messages, want %d", len(handed), len(sent))
	}
	for i, m := range handed {
		if string(m.Data) != sent[i] || len(m.To) != 1 || m.To[0] != "r@x.test" || m.Received.IsZero() {
			t.Errorf("message %d handed to OnMessage: %d octets to %v; want the %d sent to r@x.test", i, len(m.Data), m.To, len(sent[i]))
		}
	}
	mu.Unlock()
	files, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	if len(files) != 3 {
		t.Fatalf("%d message files, want 3", len(files))
	}
	found := false
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("Subject: big")) {
			found = true
			if !bytes.Equal(b, []byte(big)) {
				t.Errorf("the large message's file holds %d octets that differ from the %d sent", len(b), len(big))
			}
		}
	}
	if !found {
		t.Error("no file holds the large message")
	}
}

func asSMTP(err error, target **smtp.SMTPError) bool {
	e, ok := err.(*smtp.SMTPError)
	if ok {
		*target = e
	}
	return ok
}

func send(addr, rcpt, data string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SendMail("a@x.test", []string{rcpt}, strings.NewReader(data))
}
