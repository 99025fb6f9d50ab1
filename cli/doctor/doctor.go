// Package doctor asks every deliverer to run one of its checks
// (admin.DoctorDNS, DoctorDNSBL, DoctorConnect, DoctorAuth, DoctorTLS) and
// answers what each one found: its report, decoded and judged, or why
// there is none.
//
// How the answers are gathered: the doctor endpoints have no queue group,
// so one request reaches every deliverer. Discover first lists the
// instances of the sluice-deliverer micro service ($SRV.INFO, gathering
// replies until 300 ms pass without a new one) to know whom to expect;
// Ask then publishes the request with a reply inbox and collects answers
// until each instance answered or its wait passed. An instance that did not
// answer gets an Answer that says so: a silent deliverer is a finding, not
// a detail. Decode turns an Answer into a Report with its findings and
// verdict.
//
// It does no printing: `sluice doctor` prints the reports as a table or
// JSON Lines, and a web view can do the same from them.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/sluice-mta/sluice/proto/admin"
)

// Deliverer is a deliverer process, as discovered or as it names itself in
// its answer.
type Deliverer struct {
	// ID is the micro service instance id, unique per process.
	ID string
	// Instance is the deliverer's configured instance name.
	Instance string
	// Hostname is its EHLO host name.
	Hostname string
}

// Name names a deliverer in tables: its instance name, else its service
// id, else "?".
func (d Deliverer) Name() string {
	if d.Instance != "" {
		return d.Instance
	}
	if d.ID != "" {
		return d.ID
	}
	return "?"
}

// Answer is one deliverer's answer: Raw holds the report JSON, Err what
// went wrong instead.
type Answer struct {
	Deliverer
	Raw json.RawMessage
	Err string
}

// quietPeriod ends discovery once no new instance has answered for it.
const quietPeriod = 300 * time.Millisecond

// Discover lists the deliverers that serve the check, keyed by service
// id, waiting at most timeout for them to answer. It fails when none does.
func Discover(ctx context.Context, nc *nats.Conn, check string, timeout time.Duration) (map[string]Deliverer, error) {
	subj, err := micro.ControlSubject(micro.InfoVerb, admin.DelivererService, "")
	if err != nil {
		return nil, err
	}
	sub, ch, err := publish(nc, subj, nil)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	found := map[string]Deliverer{}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	quiet := time.NewTimer(timeout)
	defer quiet.Stop()
	want := admin.DoctorSubject(check)
	var noResponders bool
loop:
	for {
		select {
		case m := <-ch:
			if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
				noResponders = true
				break loop
			}
			var info micro.Info
			if json.Unmarshal(m.Data, &info) != nil {
				continue
			}
			for _, e := range info.Endpoints {
				if e.Subject == want {
					found[info.ID] = Deliverer{ID: info.ID, Instance: info.Metadata[admin.MetadataInstance], Hostname: info.Metadata[admin.MetadataHostname]}
				}
			}
			quiet.Reset(quietPeriod)
		case <-quiet.C:
			break loop
		case <-deadline.C:
			break loop
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if len(found) == 0 {
		why := "is any deliverer running? no reply"
		if noResponders {
			why = "is any deliverer running? nats: no responders"
		}
		return nil, fmt.Errorf("no answer from %s within %s (%s)", admin.DelivererService, timeout, why)
	}
	return found, nil
}

// Ask sends req to the check's endpoint of every deliverer and gathers
// the answers until each of the expected deliverers (from Discover)
// answered or wait passed. It returns one Answer per expected deliverer,
// an error Answer for each that stayed silent, and the answers of
// deliverers that started after discovery too, sorted by instance name and
// service id.
func Ask(ctx context.Context, nc *nats.Conn, check string, req admin.DoctorRequest, expected map[string]Deliverer, wait time.Duration) ([]Answer, error) {
	data, _ := json.Marshal(req)
	sub, ch, err := publish(nc, admin.DoctorSubject(check), data)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	got := map[string]Answer{}
	var strays []Answer
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
gather:
	for len(got)+len(strays) < len(expected) {
		select {
		case m := <-ch:
			a := decodeAnswer(m)
			if d, known := expected[a.ID]; known {
				a.Deliverer = d
				got[a.ID] = a
			} else {
				// A deliverer that started after discovery: show it too.
				strays = append(strays, a)
			}
		case <-deadline.C:
			break gather
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var out []Answer
	for id, d := range expected {
		a, ok := got[id]
		if !ok {
			a = Answer{Deliverer: d, Err: fmt.Sprintf("no answer within %s", wait)}
		}
		out = append(out, a)
	}
	out = append(out, strays...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Instance != out[j].Instance {
			return out[i].Instance < out[j].Instance
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// publish sends a request to subj with a reply inbox of its own, on which
// every answer arrives, however many there are: ch receives them until sub
// is unsubscribed.
func publish(nc *nats.Conn, subj string, data []byte) (sub *nats.Subscription, ch chan *nats.Msg, err error) {
	inbox := nats.NewInbox()
	ch = make(chan *nats.Msg, 64)
	sub, err = nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, nil, err
	}
	if err := nc.PublishRequest(subj, inbox, data); err != nil {
		_ = sub.Unsubscribe()
		return nil, nil, err
	}
	return sub, ch, nil
}

// decodeAnswer reads a reply: a micro error, or a report whose deliverer
// identity says who answered.
func decodeAnswer(m *nats.Msg) Answer {
	var head struct {
		Deliverer admin.DelivererIdentity `json:"deliverer"`
	}
	// Error replies carry the identity as their body too.
	jerr := json.Unmarshal(m.Data, &head)
	d := head.Deliverer
	a := Answer{Deliverer: Deliverer{ID: d.ServiceID, Instance: d.Instance, Hostname: d.Hostname}}
	switch code := m.Header.Get(micro.ErrorCodeHeader); {
	case code != "":
		a.Err = fmt.Sprintf("error %s: %s", code, m.Header.Get(micro.ErrorHeader))
	case jerr != nil:
		a.Err = "unreadable answer: " + jerr.Error()
	default:
		a.Raw = m.Data
	}
	return a
}
