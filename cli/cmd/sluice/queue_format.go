package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluice-mta/sluice/cli/internal/human"
)

// isTerminal reports whether w is a terminal, where colour is welcome.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// painter colours state names on a terminal only.
type painter bool

var stateColours = map[string]string{
	"ready": "32", "active": "36", "deferred": "33", "held": "35", "done": "2",
	"delivered": "32", "bounced": "31", "expired": "31", "deleted": "31", "failed": "31",
}

func (p painter) state(s string) string {
	if c, ok := stateColours[s]; ok && bool(p) {
		return "\x1b[" + c + "m" + s + "\x1b[0m"
	}
	return s
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// until renders when something is due: "now", "in 5m", "3m ago".
func until(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now)
	switch {
	case d > time.Second:
		return "in " + human.Age(d)
	case d < -time.Second:
		return human.Age(-d) + " ago"
	}
	return "now"
}

func size(n int64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 10<<10:
		return fmt.Sprintf("%dk", n>>10)
	}
	return fmt.Sprintf("%d", n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cell keeps a free-text value on one line of a table.
func cell(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if max > 0 && len(s) > max {
		s = s[:max-1] + "…"
	}
	return orDash(s)
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

func sender(s string) string {
	if s == "" {
		return "<>"
	}
	return s
}
