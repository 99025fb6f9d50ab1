// Command sluice-capture is the mail sink of the compose deployment: an SMTP
// server that accepts every message (services/capture) and lists what it
// received over HTTP, so an operator trying Sluice, or the compose test, can
// see mail arrive without a real mailbox server:
//
//	GET /messages   JSON: one object per message (from, to, message_id, bytes, received),
//	                the last -keep received, oldest first; the header
//	                Sluice-Captured-Total counts every message since the start
//	GET /healthz    200 once the SMTP listener is up
//
// It keeps no message in memory, only the summaries /messages lists (the
// last -keep, a few hundred bytes each), so a long test or a flood of large
// mail does not grow it; with -dir each message is also written there as a
// .eml file. It is for trying and testing, not for production mail.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/mail"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/services/capture"
)

func main() {
	smtpAddr := flag.String("listen", ":2525", "SMTP listen address")
	httpAddr := flag.String("http", ":8025", "HTTP listen address of /messages and /healthz")
	domain := flag.String("domain", "capture.localhost", "host name in the SMTP greeting")
	dir := flag.String("dir", "", "also write each message to this directory as a .eml file")
	keep := flag.Int("keep", 10000, "how many of the last messages /messages lists (at least 1)")
	flag.Parse()

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("service", "capture")
	if *keep < 1 {
		log.Error("-keep must be at least 1", "keep", *keep)
		os.Exit(2)
	}
	l := newLedger(*keep)
	srv, err := capture.Listen(*smtpAddr, capture.Options{Domain: *domain, Dir: *dir, Log: log, Forget: true, OnMessage: l.add})
	if err != nil {
		log.Error("listen", "err", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("GET /messages", l)
	hs := &http.Server{Addr: *httpAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Error("http", "err", err)
			os.Exit(1)
		}
	}()
	log.Info("started", "smtp_listen", srv.Addr, "http_listen", *httpAddr, "keep", *keep)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	_ = hs.Close()
	_ = srv.Close()
}

// Summary is what /messages says about one received message.
type Summary struct {
	From      string    `json:"from"`
	To        []string  `json:"to"`
	MessageID string    `json:"message_id"`
	Bytes     int       `json:"bytes"`
	Received  time.Time `json:"received"`
}

// summarize reads what /messages shows of m: its envelope, size and
// Message-Id, from the header section alone.
func summarize(m capture.Message) Summary {
	s := Summary{From: m.From, To: m.To, Bytes: len(m.Data), Received: m.Received}
	// A message whose header does not parse is still listed, without an id.
	if msg, err := mail.ReadMessage(bytes.NewReader(m.Data)); err == nil {
		s.MessageID = strings.Trim(msg.Header.Get("Message-Id"), "<> ")
	}
	return s
}

// ledger holds the summaries of the last messages received, in a ring.
type ledger struct {
	mu    sync.Mutex
	ring  []Summary
	next  int // where the next summary goes once the ring is full
	total int
}

func newLedger(keep int) *ledger { return &ledger{ring: make([]Summary, 0, keep)} }

// add records m's summary, dropping the oldest once the ring is full.
func (l *ledger) add(m capture.Message) {
	s := summarize(m)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total++
	if len(l.ring) < cap(l.ring) {
		l.ring = append(l.ring, s)
		return
	}
	l.ring[l.next] = s
	l.next = (l.next + 1) % len(l.ring)
}

// list returns the summaries kept, oldest first, and how many messages
// arrived in all.
func (l *ledger) list() ([]Summary, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Summary, 0, len(l.ring))
	out = append(append(out, l.ring[l.next:]...), l.ring[:l.next]...)
	return out, l.total
}

func (l *ledger) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	list, total := l.list()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Sluice-Captured-Total", strconv.Itoa(total))
	_ = json.NewEncoder(w).Encode(list)
}
