package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/services/capture"
)

// The sink keeps no message, only the summaries of the last -keep: a large
// message is listed with its size and id, older ones fall out of the list,
// and the total counts them all.
func TestMessagesListsTheLastSummaries(t *testing.T) {
	const keep = 3
	l := newLedger(keep)
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{Forget: true, OnMessage: l.add})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	web := httptest.NewServer(l)
	defer web.Close()

	big := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 16<<10)
	sizes := map[string]int{}
	for i := range 5 {
		id := fmt.Sprintf("m%d@capture.test", i)
		data := fmt.Sprintf("Message-Id: <%s>\r\nSubject: %d\r\n\r\nhello\r\n", id, i)
		if i == 3 {
			data += big
		}
		sizes[id] = len(data)
		if err := send(srv.Addr, "from@capture.test", []string{fmt.Sprintf("to%d@capture.test", i)}, strings.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	// A message without a header section to parse is listed without an id.
	if err := send(srv.Addr, "from@capture.test", []string{"to5@capture.test"}, strings.NewReader("no header\r\n")); err != nil {
		t.Fatal(err)
	}

	resp, err := http.Get(web.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []Summary
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if total := resp.Header.Get("Sluice-Captured-Total"); total != "6" {
		t.Errorf("Sluice-Captured-Total %q, want 6", total)
	}
	if len(got) != keep {
		t.Fatalf("%d summaries listed, want the last %d: %+v", len(got), keep, got)
	}
	wantIDs := []string{"m3@capture.test", "m4@capture.test", ""}
	for i, s := range got {
		if s.MessageID != wantIDs[i] || s.From != "from@capture.test" || len(s.To) != 1 || s.To[0] != fmt.Sprintf("to%d@capture.test", i+3) || s.Received.IsZero() {
			t.Errorf("summary %d: %+v; want id %q to to%d@capture.test", i, s, wantIDs[i], i+3)
		}
		if want := sizes[s.MessageID]; s.MessageID != "" && s.Bytes != want {
			t.Errorf("summary %d: %d bytes, want %d", i, s.Bytes, want)
		}
	}
	if got[0].Bytes < 1<<20 {
		t.Errorf("the large message is listed with %d bytes", got[0].Bytes)
	}
	if n, ms := srv.Count(), srv.Messages(); n != 6 || len(ms) != 0 {
		t.Errorf("capture counted %d and holds %d messages; want 6 and none", n, len(ms))
	}
}

func send(addr, from string, to []string, r *strings.Reader) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail(from, to, r); err != nil {
		return err
	}
	return c.Quit()
}
