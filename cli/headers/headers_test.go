package headers

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// messages are the real-world-shaped test messages; `sluice headers`
// checks its output for them against golden files next to them.
const messages = "../cmd/sluice/testdata/headers"

// TestHeadersFacts checks the analysis itself on the golden messages, so a
// wrong golden file cannot hide a wrong answer.
func TestHeadersFacts(t *testing.T) {
	read := func(name string) Report {
		raw, err := os.ReadFile(messages + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return Analyse(raw)
	}
	r := read("skewed_clocks.eml")
	if len(r.Hops) != 5 || !r.Hops[3].Skew || *r.Hops[3].Delay != -208*time.Second || r.Slowest != 3 || r.Hops[4].Date.UTC().Hour() != 12 {
		t.Errorf("skewed: %+v", r.Hops)
	}
	r = read("missing_dates.eml")
	if r.Hops[1].Date.IsZero() != true || r.Hops[3].DelayFrom != 1 || *r.Hops[3].Delay != 7*time.Minute+time.Second || !r.Date.IsZero() {
		t.Errorf("missing dates: %+v", r.Hops)
	}
	r = read("sluice_relay.eml")
	if len(r.Sluice) != 1 || r.Sluice[0].QueueID != "0634R5Y2WQ7ZK8N3D1HFXM6T" || r.Sluice[0].Hop != 2 || !r.Hops[0].TLS || r.Hops[2].TLS {
		t.Errorf("sluice: %+v %+v", r.Sluice, r.Hops)
	}
	r = read("exchange_online.eml")
	if !r.Hops[2].TLS || r.Hops[0].FromAddr != "2001:db8:4:5::20" || r.Hops[1].From != "" || len(r.Auth[0].Results) != 4 {
		t.Errorf("exchange: %+v %+v", r.Hops, r.Auth)
	}
	r = read("dsn_bounce.eml")
	if r.DSN == nil || len(r.DSN.Recipients) != 2 || r.DSN.Recipients[0][2] != "Status: 5.1.1" {
		t.Errorf("dsn: %+v", r.DSN)
	}
}

func TestParseReceivedForms(t *testing.T) {
	for _, c := range []struct {
		in                       string
		from, addr, by, with, id string
		tls, sluice, dated       bool
	}{
		{"from a.example (a.example [192.0.2.1]) by b.example (Sluice) with ESMTPS id Q1 for <x@y>; Mon, 02 Jun 2025 10:00:00 +0000",
			"a.example", "192.0.2.1", "b.example", "ESMTPS", "Q1", true, true, true},
		{"FROM a BY b WITH esmtpsa ID 7; 2 Jun 2025 10:00:00 -0000", "a", "", "b", "esmtpsa", "7", true, false, true},
		{"from x ([IPv6:2001:db8::1]) by y with ESMTP (Exim 4.97) (TLS1.3) tls TLS_AES_256_GCM_SHA384 id 1; Mon, 2 Jun 2025 10:00:00 +0100 (BST)",
			"x", "2001:db8::1", "y", "ESMTP tls TLS_AES_256_GCM_SHA384", "1", true, false, true},
		{"by y", "", "", "y", "", "", false, false, false},
		{"", "", "", "", "", "", false, false, false},
	} {
		h := parseReceived(c.in)
		if h.From != c.from || h.FromAddr != c.addr || h.By != c.by || h.With != c.with || h.ID != c.id ||
			h.TLS != c.tls || h.Sluice != c.sluice || h.Date.IsZero() == c.dated {
			t.Errorf("%q:\n got %+v", c.in, h)
		}
	}
}

// FuzzParseReceived: any input gives an answer, never a panic or a hang,
// and the analysis of a whole message built around it survives too. The
// seed corpus is testdata/fuzz/FuzzParseReceived plus every Received field
// of the golden messages.
func FuzzParseReceived(f *testing.F) {
	files, _ := filepath.Glob(messages + "/*.eml")
	for _, file := range files {
		raw, _ := os.ReadFile(file)
		fields, _, _ := splitHeader(raw)
		for _, fl := range fields {
			if strings.EqualFold(fl.Name, "Received") {
				f.Add(fl.Value)
			}
		}
	}
	f.Add("from (((( by ))))")
	f.Add("from \"quoted \\\" by\" by x; ;;;")
	f.Fuzz(func(t *testing.T, v string) {
		h := parseReceived(v)
		if h.Sluice && !strings.Contains(strings.ToLower(v), "sluice") {
			t.Fatalf("Sluice hop without the word: %q", v)
		}
		msg := "Received: " + strings.ReplaceAll(v, "\n", "\n ") + "\r\nDate: " + v + "\r\nSubject: x\r\n\r\nbody\r\n"
		_ = Analyse([]byte(msg))
	})
}
