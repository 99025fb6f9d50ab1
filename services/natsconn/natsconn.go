// Package natsconn opens the NATS connection and JetStream context every
// Sluice service uses, with the credentials, TLS and timeouts of its config,
// and waits for NATS as long as it takes: a service never exits because
// NATS is slow, absent or electing a leader.
package natsconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/services/config"
)

// maxPingsOut is how many pings may go unanswered before the connection is
// given up for another server.
const maxPingsOut = 3

// Connect dials NATS as the named client. It retries the first connection
// with backoff until it succeeds, ctx ends or the servers refuse us for good
// (bad credentials or certificates: see Permanent), because services start
// together with their servers and a cluster may be down for a while; it
// logs progress every ProgressEvery. It reconnects forever afterwards.
// Extra options are applied last (e.g. nats.InProcessServer for a service
// running in the server's process).
func Connect(ctx context.Context, cfg config.NATS, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(cfg.RequestTimeout),
		// A server that stops answering (frozen, partitioned) is left
		// after three missed pings, not after the default 6 min.
		nats.PingInterval(cfg.PingInterval),
		nats.MaxPingsOutstanding(maxPingsOut),
		nats.RetryOnFailedConnect(false),
		// Fail publishes at once while disconnected instead of buffering them:
		// a buffered publish could be stored after its sender gave up (the
		// ingress would already have answered 451), or never.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
	}
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if cfg.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, nil, fmt.Errorf("nats.nkey_seed_file: %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.CAFile))
	}
	if cfg.CertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.CertFile, cfg.KeyFile))
	}
	opts = append(opts, extra...)
	var nc *nats.Conn
	err := Retry(ctx, log, "connect to NATS at "+cfg.URL, func(context.Context) error {
		c, err := nats.Connect(cfg.URL, opts...)
		if err != nil {
			return err
		}
		nc = c
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", cfg.URL, err)
	}
	log.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "cluster", nc.ConnectedClusterName())
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(cfg.RequestTimeout))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// ProgressEvery is how often Retry logs that it is still waiting.
var ProgressEvery = 10 * time.Second

// Backoff bounds: the first retry comes after MinBackoff, each next one
// after twice as long (with jitter), up to MaxBackoff.
const (
	MinBackoff = 250 * time.Millisecond
	MaxBackoff = 5 * time.Second
)

// Retry runs fn until it succeeds, fails permanently (see Permanent) or ctx
// ends, waiting with exponential backoff between attempts. It logs the
// first failure and then its progress every ProgressEvery (attempts, time
// waited, last error), and once more when fn succeeds after failing, so an
// operator sees what a starting service waits for. The error it returns is
// fn's (for a permanent failure) or ctx's, with fn's last error.
func Retry(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	start := time.Now()
	var lastLog time.Time
	wait := MinBackoff
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			if attempt > 1 {
				log.Info("done after waiting", "what", what, "attempts", attempt, "waited", time.Since(start).Round(time.Millisecond).String())
			}
			return nil
		}
		if IsPermanent(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		if time.Since(lastLog) >= ProgressEvery {
			log.Warn("waiting for NATS", "what", what, "attempts", attempt,
				"waited", time.Since(start).Round(time.Second).String(), "err", err.Error(), "retry_in", wait.String())
			lastLog = time.Now()
		}
		// Full jitter over the upper half, so services that started
		// together do not retry in lock step.
		d := wait/2 + time.Duration(rand64()%uint64(wait/2+1))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, MaxBackoff)
	}
}

type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// Permanent marks err as one that waiting cannot cure (bad configuration),
// so Retry returns it at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// IsPermanent reports whether err cannot be cured by waiting: marked with
// Permanent, refused credentials, a server certificate we do not trust, or
// a JetStream answer that the configuration itself is invalid. Everything
// else (no servers, timeouts, no responders, no leader, insufficient
// resources while a cluster forms) is worth waiting for.
func IsPermanent(err error) bool {
	var p permanent
	if errors.As(err, &p) {
		return true
	}
	if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) {
		return true
	}
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var verify *tls.CertificateVerificationError
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &verify) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamNameInUse, // a stream of that name with another configuration
			10052, // invalid stream configuration
			10074, // replicas > 1 not supported in non-clustered mode
			10025: // invalid JSON
			return true
		}
	}
	return false
}

func rand64() uint64 { return rand.Uint64() }
