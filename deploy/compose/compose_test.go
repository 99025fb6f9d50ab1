// Package compose holds the compose deployment (compose.yaml, sluice.yaml,
// nats.conf) and its test, which runs the deployment for real on a Docker
// engine: `make test-compose` (test.sh) builds the images, starts the
// stack under a project name of its own, runs TestCompose with that name in
// SLUICE_COMPOSE_PROJECT, and removes every container, network and volume
// of the project afterwards, whatever happened. Without the variable (in
// `make test`) the test is skipped.
package compose

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// stack is the running compose project.
type stack struct {
	t       *testing.T
	project string
	command []string // "docker-compose" or "docker compose"
	files   []string
}

func (s *stack) compose(args ...string) (string, error) {
	full := append(append([]string{}, s.command[1:]...), "-p", s.project)
	for _, f := range s.files {
		full = append(full, "-f", f)
	}
	full = append(full, args...)
	return run(s.command[0], full...)
}

func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out.String())
	}
	return strings.TrimSpace(out.String()), err
}

func (s *stack) must(args ...string) string {
	s.t.Helper()
	out, err := s.compose(args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// container is the id of a service's container.
func (s *stack) container(service string) string {
	s.t.Helper()
	id := s.must("ps", "-q", service)
	if id == "" || strings.Contains(id, "\n") {
		s.t.Fatalf("service %s: want one container, got %q", service, id)
	}
	return id
}

// published is the host address a container port of a service is
// published on.
func (s *stack) published(service string, port int) string {
	s.t.Helper()
	out := s.must("port", service, fmt.Sprint(port))
	if !strings.HasPrefix(out, "127.0.0.1:") {
		s.t.Fatalf("%s port %d is published on %q, want 127.0.0.1 (test.sh publishes on loopback only)", service, port, out)
	}
	return out
}

// running are the services the test starts (test.sh starts the same).
var running = []string{"nats-1", "nats-2", "nats-3", "ingress", "scheduler", "deliverer-1", "deliverer-2", "bouncer", "capture"}

// waitHealthy waits until every running service's health check passes.
func (s *stack) waitHealthy(timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var bad []string
		for _, svc := range running {
			id := s.container(svc)
			st, err := run("docker", "inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}", id)
			if err != nil {
				s.t.Fatal(err)
			}
			if st != "running healthy" {
				bad = append(bad, svc+": "+st)
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("not healthy after %s: %s", timeout, strings.Join(bad, ", "))
		}
		time.Sleep(2 * time.Second)
	}
}

func newStack(t *testing.T) *stack {
	project := os.Getenv("SLUICE_COMPOSE_PROJECT")
	if project == "" {
		t.Skip("SLUICE_COMPOSE_PROJECT is not set: `make test-compose` runs this test against a stack it starts")
	}
	command := strings.Fields(os.Getenv("SLUICE_COMPOSE_COMMAND"))
	if len(command) == 0 {
		command = []string{"docker-compose"}
	}
	return &stack{t: t, project: project, command: command, files: []string{"compose.yaml", "compose.local.yaml"}}
}

func TestCompose(t *testing.T) {
	s := newStack(t)
	start := time.Now()
	s.waitHealthy(3 * time.Minute)
	t.Logf("every service healthy after %s", time.Since(start).Round(time.Second))

	sub := &submitter{
		addr:     s.published("ingress", 2587),
		user:     "submit",
		password: s.password(),
		tls:      s.tlsConfig(),
	}
	smtpAddr := s.published("ingress", 2525)
	sink := "http://" + s.published("capture", 8025) + "/messages"

	t.Run("relay refused from the host", func(t *testing.T) { relayRefused(t, smtpAddr) })
	t.Run("submission needs AUTH", func(t *testing.T) { authRequired(t, sub) })
	t.Run("MX accepts its domain from anyone", func(t *testing.T) {
		id := fmt.Sprintf("mx-%d@compose.test", time.Now().UnixNano())
		if err := sendPlain(smtpAddr, id); err != nil {
			t.Fatal(err)
		}
		waitDelivered(t, sink, []string{id}, time.Minute)
	})
	t.Run("submission delivers to the sink", func(t *testing.T) {
		id := fmt.Sprintf("first-%d@compose.test", time.Now().UnixNano())
		c, err := sub.dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if reply, err := sub.send(c, id); err != nil || !strings.Contains(reply, "queued as") {
			t.Fatalf("send: %q, %v", reply, err)
		}
		waitDelivered(t, sink, []string{id}, time.Minute)
	})
	if t.Failed() {
		return
	}
	t.Run("NATS node stopped and another cut off during a load", func(t *testing.T) { faultLoad(t, s, sub, sink) })
}

// password reads the example credential that the setup service printed.
func (s *stack) password() string {
	s.t.Helper()
	logs := s.must("logs", "--no-color", "setup")
	m := regexp.MustCompile(`submission user: submit password: (\S+)`).FindStringSubmatch(logs)
	if m == nil {
		s.t.Fatalf("setup printed no credential:\n%s", logs)
	}
	return m[1]
}

// tlsConfig trusts exactly the certificate that setup generated for the
// ingress, read out of its container, for the name it was made for.
func (s *stack) tlsConfig() *tls.Config {
	s.t.Helper()
	dir := s.t.TempDir()
	if _, err := run("docker", "cp", s.container("ingress")+":/var/lib/sluice/secrets/tls.pem", dir+"/tls.pem"); err != nil {
		s.t.Fatal(err)
	}
	pem, err := os.ReadFile(dir + "/tls.pem")
	if err != nil {
		s.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		s.t.Fatal("tls.pem holds no certificate")
	}
	return &tls.Config{RootCAs: pool, ServerName: "mail.example.com"}
}

// relayRefused connects to the published port 25 from the host, as
// anyone on the Internet would (Docker forwards the connection from the
// bridge's gateway), and asks to relay to a foreign domain.
func relayRefused(t *testing.T, addr string) {
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("outside.example.net"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("spammer@outside.example.net", nil); err != nil {
		t.Fatal(err)
	}
	err = c.Rcpt("victim@example.org", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || (se.Code != 550 && se.Code != 554) || se.EnhancedCode[0] != 5 || se.EnhancedCode[1] != 7 {
		t.Fatalf("RCPT to a foreign domain on the relay port: %v, want 550/554 5.7.x relay denied", err)
	}
	t.Logf("relay refused: %d %v %s", se.Code, se.EnhancedCode, se.Message)
}

// authRequired checks that the submission port takes no mail before AUTH.
func authRequired(t *testing.T, sub *submitter) {
	c, err := smtp.DialStartTLS(sub.addr, sub.tls)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Mail("someone@example.com", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 530 {
		t.Fatalf("MAIL before AUTH: %v, want 530 5.7.0", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", sub.user, "wrong-"+sub.password)); err == nil {
		t.Fatal("AUTH with a wrong password succeeded")
	}
}

// sendPlain sends one message to the MX domain over port 25, no AUTH.
func sendPlain(addr, id string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("outside.example.net"); err != nil {
		return err
	}
	return c.SendMail("someone@outside.example.net", []string{"postmaster@example.test"}, strings.NewReader(message(id)))
}

func message(id string) string {
	return "From: <someone@example.com>\r\nTo: <rcpt@example.test>\r\nSubject: compose test\r\nMessage-ID: <" + id + ">\r\n\r\nbody of " + id + "\r\n"
}

// submitter sends mail through the submission port with STARTTLS and AUTH.
type submitter struct {
	addr, user, password string
	tls                  *tls.Config
}

func (sub *submitter) dial() (*smtp.Client, error) {
	c, err := smtp.DialStartTLS(sub.addr, sub.tls)
	if err != nil {
		return nil, err
	}
	if err := c.Auth(sasl.NewPlainClient("", sub.user, sub.password)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// send sends one message on c and returns the final reply's text.
func (sub *submitter) send(c *smtp.Client, id string) (string, error) {
	if err := c.Mail("sender@example.com", nil); err != nil {
		return "", err
	}
	if err := c.Rcpt("rcpt@example.test", nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte(message(id))); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// received is what the sink lists about one message.
type received struct {
	MessageID string `json:"message_id"`
}

// delivered counts the sink's messages by Message-ID.
func delivered(sink string) (map[string]int, error) {
	resp, err := http.Get(sink)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list []received
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, err
	}
	n := make(map[string]int, len(list))
	for _, m := range list {
		n[m.MessageID]++
	}
	return n, nil
}

// waitDelivered waits until every id has reached the sink and returns the
// sink's counts.
func waitDelivered(t *testing.T, sink string, ids []string, timeout time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, err := delivered(sink)
		missing := 0
		if err == nil {
			for _, id := range ids {
				if got[id] == 0 {
					missing++
				}
			}
			if missing == 0 {
				return got
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, %d of %d messages not delivered (sink: %v)", timeout, missing, len(ids), err)
		}
		time.Sleep(time.Second)
	}
}

// faultLoad sends mail from several sessions while one NATS node is
// stopped and then another is cut off from the network (leaving the
// cluster without a quorum for a while), brings both back, and checks that
// every message accepted with 250 was delivered, counted by Message-ID.
func faultLoad(t *testing.T, s *stack, sub *submitter, sink string) {
	const sessions = 8
	network := s.project + "_default"
	stopped, cut := "nats-2", "nats-3"
	cutID := s.container(cut)

	var (
		mu        sync.Mutex
		accepted  []string
		tries     = map[string]int{} // transactions per Message-ID
		tempFails atomic.Int64
		seq       atomic.Int64
		done      = make(chan struct{})
		wg        sync.WaitGroup
	)
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *smtp.Client
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			var id string // a message not accepted yet is sent again, same id
			for {
				select {
				case <-done:
					return
				default:
				}
				if id == "" {
					id = fmt.Sprintf("load-%d-%d@compose.test", i, seq.Add(1))
				}
				if c == nil {
					var err error
					if c, err = sub.dial(); err != nil {
						c = nil
						time.Sleep(200 * time.Millisecond)
						continue
					}
				}
				mu.Lock()
				tries[id]++
				mu.Unlock()
				reply, err := sub.send(c, id)
				if err != nil {
					tempFails.Add(1)
					var se *smtp.SMTPError
					if errors.As(err, &se) && se.Code/100 == 5 {
						t.Errorf("permanent failure for %s: %v", id, err)
						return
					}
					// 4xx or a broken session: start over on a new one.
					c.Close()
					c = nil
					time.Sleep(200 * time.Millisecond)
					continue
				}
				if !strings.Contains(reply, "queued as") {
					t.Errorf("250 reply without a queue id: %q", reply)
				}
				mu.Lock()
				accepted = append(accepted, id)
				mu.Unlock()
				id = ""
				// Pace the load so that it spans the faults: about 40
				// messages a second from all sessions.
				time.Sleep(200 * time.Millisecond)
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(accepted) }
	step := func(what string, f func() error) {
		t.Helper()
		if err := f(); err != nil {
			close(done)
			wg.Wait()
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s (accepted so far: %d, temporary failures: %d)", what, count(), tempFails.Load())
	}

	time.Sleep(5 * time.Second)
	step("stopped "+stopped, func() error { _, err := s.compose("stop", "-t", "5", stopped); return err })
	time.Sleep(5 * time.Second)
	step("disconnected "+cut+" from "+network, func() error { _, err := run("docker", "network", "disconnect", network, cutID); return err })
	time.Sleep(8 * time.Second)
	// Reconnecting drops the service's DNS alias unless it is given again.
	step("reconnected "+cut, func() error {
		_, err := run("docker", "network", "connect", "--alias", cut, network, cutID)
		return err
	})
	time.Sleep(5 * time.Second)
	step("started "+stopped, func() error { _, err := s.compose("start", stopped); return err })
	time.Sleep(10 * time.Second)
	close(done)
	wg.Wait()

	mu.Lock()
	ids := append([]string(nil), accepted...)
	mu.Unlock()
	if len(ids) < 200 {
		t.Fatalf("only %d messages accepted during the load; want at least 200 for the test to mean something", len(ids))
	}
	start := time.Now()
	got := waitDelivered(t, sink, ids, 3*time.Minute)
	// A message the client sent again after a 4xx or a broken session may
	// have been stored the first time too: its second copy is the client's
	// doing. Any other duplicate is Sluice's (a job redelivered after a
	// failure), and the issue bounds those at 1% of the load.
	dups, clientDups, unknown := 0, 0, 0
	for id, n := range got {
		if !strings.HasPrefix(id, "load-") {
			continue
		}
		switch sent := tries[id]; {
		case sent == 0:
			unknown++
		case n > sent:
			dups += n - sent
			clientDups += sent - 1
		default:
			clientDups += n - 1
		}
	}
	t.Logf("accepted %d, all delivered (%s after the load); %d duplicate deliveries, %d more of messages the client sent again after %d temporary failures",
		len(ids), time.Since(start).Round(time.Second), dups, clientDups, tempFails.Load())
	if unknown > 0 {
		t.Errorf("%d delivered messages were never sent", unknown)
	}
	// Sluice's duplicates are jobs in flight when a node went away, so
	// they do not grow with the load; a slow machine that accepted only a
	// few hundred messages must not fail for 1% of a small number. Seen:
	// 0 to 5 in runs of 560 to 1,089 messages.
	if limit := max(len(ids)/100, 8); dups > limit {
		t.Errorf("%d duplicate deliveries, want at most %d (1%% of the load, at least 8)", dups, limit)
	}

	// Every node current again: a node's full /healthz (without
	// js-enabled-only) answers 200 only once the streams and consumers it
	// holds a replica of have caught up.
	waitCurrent(t, s, 2*time.Minute)
	if err := logHealth(s); err != nil {
		t.Log(err)
	}
}

// waitCurrent waits until every NATS node reports its replicas current.
func waitCurrent(t *testing.T, s *stack, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
		id := s.container(n)
		for {
			out, err := run("docker", "exec", id, "/opt/sluice/healthcheck", "http://127.0.0.1:8222/healthz")
			if err == nil {
				break
			}
			if time.Since(start) > timeout {
				t.Fatalf("%s not current %s after the load: %s", n, timeout, out)
			}
			time.Sleep(2 * time.Second)
		}
	}
	t.Logf("every NATS node current %s after the deliveries", time.Since(start).Round(time.Second))
}

// logHealth notes any service that is not healthy at the end (a restart
// loop would show here).
func logHealth(s *stack) error {
	out, err := s.compose("ps")
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "unhealthy") || strings.Contains(sc.Text(), "Restarting") {
			s.t.Log(sc.Text())
		}
	}
	return nil
}
