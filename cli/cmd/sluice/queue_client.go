package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/sluice-mta/sluice/proto/wire"
)

// queueClient asks the scheduler's queue admin API. It never reads the
// streams itself: the services own them.
type queueClient struct {
	nc      *nats.Conn
	timeout time.Duration
}

func dialQueue(o *queueOpts) (*queueClient, error) {
	opts := []nats.Option{nats.Name("sluice-cli"), nats.Timeout(o.timeout), nats.NoReconnect()}
	if o.creds != "" {
		opts = append(opts, nats.UserCredentials(o.creds))
	}
	nc, err := nats.Connect(o.server, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s within %s: %v", o.server, o.timeout, err)
	}
	return &queueClient{nc: nc, timeout: o.timeout}, nil
}

func (c *queueClient) close() { c.nc.Close() }

// serviceError is an error the service answered with.
type serviceError struct {
	code string
	msg  string
}

func (e *serviceError) Error() string { return e.msg }

// call sends req to endpoint and decodes the answer into resp, waiting up to
// wait for it.
func (c *queueClient) call(endpoint string, req, resp any, wait time.Duration) error {
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	msg, err := c.nc.Request(wire.AdminQueueSubject(endpoint), data, wait)
	if err != nil {
		return noAnswer(err, wait)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return &serviceError{code: code, msg: msg.Header.Get(micro.ErrorHeader)}
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("unreadable answer from %s: %v", wire.SchedulerService, err)
	}
	return nil
}

// ping checks that a scheduler answers, within the timeout, before a change
// that may take long: so a missing service is reported at once.
func (c *queueClient) ping() error {
	subj, err := micro.ControlSubject(micro.PingVerb, wire.SchedulerService, "")
	if err != nil {
		return err
	}
	if _, err := c.nc.Request(subj, nil, c.timeout); err != nil {
		return noAnswer(err, c.timeout)
	}
	return nil
}

func noAnswer(err error, wait time.Duration) error {
	hint := ""
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) {
		hint = "is it running? "
	}
	return fmt.Errorf("no answer from %s within %s (%s%v)", wire.SchedulerService, wait, hint, err)
}

// actor names the operator in the events their changes record.
func actor() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, _ := os.Hostname()
	if name == "" {
		name = "unknown"
	}
	return strings.TrimSuffix(name+"@"+host, "@")
}
