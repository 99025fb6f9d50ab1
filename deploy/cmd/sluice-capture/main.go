// Command sluice-capture is the mail sink of the compose deployment: an SMTP
// server that accepts every message (services/capture) and lists what it
// received over HTTP, so an operator trying Sluice, or the compose test, can
// see mail arrive without a real mailbox server:
//
//	GET /messages   JSON: one object per message (from, to, message_id, bytes, received)
//	GET /healthz    200 once the SMTP listener is up
//
// It keeps every message in memory (and in -dir when set), so it is for
// trying and testing, not for production mail.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/mail"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/services/capture"
)

func main() {
	smtpAddr := flag.String("listen", ":2525", "SMTP listen address")
	httpAddr := flag.String("http", ":8025", "HTTP listen address of /messages and /healthz")
	domain := flag.String("domain", "capture.localhost", "host name in the SMTP greeting")
	dir := flag.String("dir", "", "also write each message to this directory as a .eml file")
	flag.Parse()

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("service", "capture")
	srv, err := capture.Listen(*smtpAddr, capture.Options{Domain: *domain, Dir: *dir, Log: log})
	if err != nil {
		log.Error("listen", "err", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /messages", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(summaries(srv.Messages()))
	})
	hs := &http.Server{Addr: *httpAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Error("http", "err", err)
			os.Exit(1)
		}
	}()
	log.Info("started", "smtp_listen", srv.Addr, "http_listen", *httpAddr)

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

func summaries(ms []capture.Message) []Summary {
	out := make([]Summary, 0, len(ms))
	for _, m := range ms {
		s := Summary{From: m.From, To: m.To, Bytes: len(m.Data), Received: m.Received}
		// A message whose header does not parse is still listed, without an id.
		if msg, err := mail.ReadMessage(strings.NewReader(string(m.Data))); err == nil {
			s.MessageID = strings.Trim(msg.Header.Get("Message-Id"), "<> ")
		}
		out = append(out, s)
	}
	return out
}
