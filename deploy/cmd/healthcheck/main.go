// Command healthcheck is the health check of Sluice's container images: it
// GETs a URL and exits 0 when the answer is 2xx, 1 otherwise. Images are
// built FROM scratch, with no shell, curl or wget, so a container's
// HEALTHCHECK (or a compose healthcheck) needs a binary of its own:
//
//	healthcheck http://127.0.0.1:9100/readyz
//	healthcheck 'http://127.0.0.1:8222/healthz?js-enabled-only=true'
//
// It is static and tiny, and reads nothing but its arguments.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	timeout := flag.Duration("timeout", 3*time.Second, "give up after this long")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: healthcheck [-timeout 3s] URL")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := check(flag.Arg(0), *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "unhealthy:", err)
		os.Exit(1)
	}
}

// check GETs url and reports an error unless the status is 2xx.
func check(url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// A short body helps whoever reads `docker inspect`'s health log.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s %s", url, resp.Status, body)
	}
	return nil
}
