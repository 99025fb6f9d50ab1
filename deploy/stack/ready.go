package stack

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

// Ready waits until every service says it is ready on its metrics listener:
// /readyz answers 200 once a service is connected to NATS, has provisioned
// its streams and has started its work. A service built before /readyz
// existed answers it 404; its /healthz, which then reported the same, is
// asked instead. A service that exits meanwhile is an error.
func (s *Stack) Ready(ctx context.Context) error {
	for _, p := range s.Procs() {
		addr := s.Metrics[p.Name]
		if addr == "" {
			continue
		}
		var last string
		for {
			ok, why := ready(ctx, addr)
			if ok {
				break
			}
			last = why
			select {
			case <-p.Done():
				return fmt.Errorf("%s exited (code %d) before it was ready; see %s, which ends:\n%s", p.Name, p.ExitCode(), p.Log(), logTail(p.Log(), 10))
			case <-ctx.Done():
				return fmt.Errorf("%s not ready: %w (last answer: %s); see %s", p.Name, ctx.Err(), last, p.Log())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// logTail is the last n lines of the log file at path (a test's temporary
// directory is gone by the time anyone reads a CI log).
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// ready asks one service's /readyz (or, where it has none, /healthz).
func ready(ctx context.Context, addr string) (bool, string) {
	for _, path := range []string{"/readyz", "/healthz"} {
		code, err := get(ctx, "http://"+addr+path)
		if err != nil {
			return false, err.Error()
		}
		if code == http.StatusNotFound && path == "/readyz" {
			continue
		}
		return code == http.StatusOK, fmt.Sprintf("%s %d", path, code)
	}
	return false, "no /readyz or /healthz"
}

func get(ctx context.Context, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
