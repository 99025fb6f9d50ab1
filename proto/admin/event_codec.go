package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// This file is the stored form of queue events: protobuf, the message
// sluice.v1.QueueEvent of proto/sluicev1/sluice.proto, encoded and decoded
// here with protowire rather than through the generated code. Why by hand:
// every scheduler folds every event of SLUICE_EVENTS into its index when it
// starts, two or more per job, a few million for a large queue; the
// generated code (and encoding/json before it) allocates a message and a
// string per field for each, where the index keeps only a few small
// numbers and some interned strings. EventReader decodes with no
// allocation at all. The tests check this code against the generated
// types, field by field.
//
// Events written before are JSON (QueueEvent's struct tags), and a stream
// keeps them for days: the decoders read both. The encoder writes the
// schema field first, so an encoded event starts with byte 0x08 (field 1,
// varint) where a JSON one starts with '{'.

// queueEventSchema is the value of sluice.v1.QueueEvent.schema.
const queueEventSchema = 1

// Field numbers of sluice.v1.QueueEvent, QueueEnvelope and
// QueueRecipientResult.
const (
	evSchema      = 1
	evType        = 2
	evTime        = 3
	evQueueID     = 4
	evJobID       = 5
	evState       = 6
	evAttempt     = 7
	evPriority    = 8
	evTraceID     = 9
	evInstance    = 10
	evActor       = 11
	evEnvelope    = 12
	evReason      = 13
	evError       = 14
	evRemoteHost  = 15
	evStarted     = 16
	evNextAttempt = 17
	evRecipients  = 18
	evNote        = 19

	envSender     = 1
	envRecipients = 2
	envDomain     = 3
	envSize       = 4
	envReceived   = 5
	envExpires    = 6
	envJobsTotal  = 7
	envENVID      = 8
	envRET        = 9
	envRequireTLS = 10
	envSMTPUTF8   = 11
	envIsDSN      = 12

	rrAddress    = 1
	rrOutcome    = 2
	rrReason     = 3
	rrReply      = 4
	rrRemoteHost = 5
	rrTLS        = 6

	tlsPolicy     = 1
	tlsVersion    = 2
	tlsCipher     = 3
	tlsVerifiedBy = 4
	tlsReported   = 5
)

// MarshalQueueEvent encodes ev in its stored form, a sluice.v1.QueueEvent.
func MarshalQueueEvent(ev *QueueEvent) []byte {
	return AppendQueueEvent(make([]byte, 0, sizeEvent(ev)), ev)
}

// AppendQueueEvent appends the stored form of ev to b.
func AppendQueueEvent(b []byte, ev *QueueEvent) []byte {
	b = protowire.AppendTag(b, evSchema, protowire.VarintType)
	b = protowire.AppendVarint(b, queueEventSchema)
	b = appendString(b, evType, ev.Type)
	b = appendTime(b, evTime, ev.Time)
	b = appendString(b, evQueueID, ev.QueueID)
	b = appendString(b, evJobID, ev.JobID)
	b = appendString(b, evState, ev.State)
	b = appendVarint(b, evAttempt, uint64(ev.Attempt))
	b = appendString(b, evPriority, ev.Priority)
	b = appendString(b, evTraceID, ev.TraceID)
	b = appendString(b, evInstance, ev.Instance)
	b = appendString(b, evActor, ev.Actor)
	if env := ev.Envelope; env != nil {
		b = protowire.AppendTag(b, evEnvelope, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sizeEnvelope(env)))
		b = appendEnvelope(b, env)
	}
	b = appendString(b, evReason, ev.Reason)
	b = appendString(b, evError, ev.Error)
	b = appendString(b, evRemoteHost, ev.RemoteHost)
	b = appendTime(b, evStarted, ev.Started)
	b = appendTime(b, evNextAttempt, ev.NextAttempt)
	for i := range ev.Recipients {
		r := &ev.Recipients[i]
		b = protowire.AppendTag(b, evRecipients, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sizeRecipient(r)))
		b = appendString(b, rrAddress, r.Address)
		b = appendString(b, rrOutcome, r.Outcome)
		b = appendString(b, rrReason, r.Reason)
		b = appendString(b, rrReply, r.Reply)
		b = appendString(b, rrRemoteHost, r.RemoteHost)
		if r.TLS != (QueueTLS{}) {
			b = protowire.AppendTag(b, rrTLS, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(sizeTLS(&r.TLS)))
			b = appendString(b, tlsPolicy, r.TLS.Policy)
			b = appendString(b, tlsVersion, r.TLS.Version)
			b = appendString(b, tlsCipher, r.TLS.Cipher)
			b = appendString(b, tlsVerifiedBy, r.TLS.VerifiedBy)
			b = appendString(b, tlsReported, r.TLS.Reported)
		}
	}
	b = appendString(b, evNote, ev.Note)
	return b
}

func appendEnvelope(b []byte, env *QueueEnvelope) []byte {
	b = appendString(b, envSender, env.Sender)
	for _, r := range env.Recipients {
		// Repeated strings are written even when empty: their position
		// is their meaning.
		b = protowire.AppendTag(b, envRecipients, protowire.BytesType)
		b = protowire.AppendString(b, r)
	}
	b = appendString(b, envDomain, env.Domain)
	b = appendVarint(b, envSize, uint64(env.Size))
	b = appendTime(b, envReceived, env.Received)
	b = appendTime(b, envExpires, env.Expires)
	b = appendVarint(b, envJobsTotal, uint64(env.JobsTotal))
	b = appendString(b, envENVID, env.ENVID)
	b = appendString(b, envRET, env.RET)
	b = appendBool(b, envRequireTLS, env.RequireTLS)
	b = appendBool(b, envSMTPUTF8, env.SMTPUTF8)
	b = appendBool(b, envIsDSN, env.IsDSN)
	return b
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendBool(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	return appendVarint(b, num, 1)
}

func appendTime(b []byte, num protowire.Number, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	return appendVarint(b, num, uint64(t.UnixNano()))
}

func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func sizeTime(num protowire.Number, t time.Time) int {
	if t.IsZero() {
		return 0
	}
	return sizeVarint(num, uint64(t.UnixNano()))
}

func sizeBool(num protowire.Number, v bool) int {
	if !v {
		return 0
	}
	return sizeVarint(num, 1)
}

func sizeEnvelope(env *QueueEnvelope) int {
	n := sizeString(envSender, env.Sender) + sizeString(envDomain, env.Domain) +
		sizeVarint(envSize, uint64(env.Size)) + sizeTime(envReceived, env.Received) +
		sizeTime(envExpires, env.Expires) + sizeVarint(envJobsTotal, uint64(env.JobsTotal)) +
		sizeString(envENVID, env.ENVID) + sizeString(envRET, env.RET) + sizeBool(envRequireTLS, env.RequireTLS) +
		sizeBool(envSMTPUTF8, env.SMTPUTF8) + sizeBool(envIsDSN, env.IsDSN)
	for _, r := range env.Recipients {
		n += protowire.SizeTag(envRecipients) + protowire.SizeBytes(len(r))
	}
	return n
}

func sizeRecipient(r *QueueRecipientResult) int {
	n := sizeString(rrAddress, r.Address) + sizeString(rrOutcome, r.Outcome) + sizeString(rrReason, r.Reason) +
		sizeString(rrReply, r.Reply) + sizeString(rrRemoteHost, r.RemoteHost)
	if r.TLS != (QueueTLS{}) {
		n += protowire.SizeTag(rrTLS) + protowire.SizeBytes(sizeTLS(&r.TLS))
	}
	return n
}

func sizeTLS(t *QueueTLS) int {
	return sizeString(tlsPolicy, t.Policy) + sizeString(tlsVersion, t.Version) + sizeString(tlsCipher, t.Cipher) +
		sizeString(tlsVerifiedBy, t.VerifiedBy) + sizeString(tlsReported, t.Reported)
}

func sizeEvent(ev *QueueEvent) int {
	n := sizeVarint(evSchema, queueEventSchema) + sizeString(evType, ev.Type) + sizeTime(evTime, ev.Time) +
		sizeString(evQueueID, ev.QueueID) + sizeString(evJobID, ev.JobID) + sizeString(evState, ev.State) +
		sizeVarint(evAttempt, uint64(ev.Attempt)) + sizeString(evPriority, ev.Priority) +
		sizeString(evTraceID, ev.TraceID) + sizeString(evInstance, ev.Instance) + sizeString(evActor, ev.Actor) +
		sizeString(evReason, ev.Reason) + sizeString(evError, ev.Error) + sizeString(evRemoteHost, ev.RemoteHost) +
		sizeTime(evStarted, ev.Started) + sizeTime(evNextAttempt, ev.NextAttempt) + sizeString(evNote, ev.Note)
	if ev.Envelope != nil {
		n += protowire.SizeTag(evEnvelope) + protowire.SizeBytes(sizeEnvelope(ev.Envelope))
	}
	for i := range ev.Recipients {
		n += protowire.SizeTag(evRecipients) + protowire.SizeBytes(sizeRecipient(&ev.Recipients[i]))
	}
	return n
}

// ErrEventEncoding is returned for data that is neither form of an event.
var ErrEventEncoding = errors.New("queue event: neither protobuf (0x08) nor JSON ('{')")

// UnmarshalQueueEvent decodes a stored event, protobuf or the JSON of
// older events, into ev, which it clears first.
func UnmarshalQueueEvent(data []byte, ev *QueueEvent) error {
	*ev = QueueEvent{}
	d := decoder{}
	return d.any(data, ev)
}

// EventReader decodes stored events for a reader that folds many of them
// and keeps little of each (the scheduler's index): the strings of a
// protobuf event share the memory of the data instead of being copied,
// and the event, its envelope and its recipients are reused from one Read
// to the next, so that reading an event allocates nothing.
type EventReader struct {
	ev  QueueEvent
	env QueueEnvelope
}

// Read decodes data. The event it returns is valid until the next Read,
// and only while data is neither modified nor reused; whatever the caller
// keeps of it, it must copy (strings.Clone).
func (r *EventReader) Read(data []byte) (*QueueEvent, error) {
	// encoding/json decodes into the reused elements in place, keeping
	// the fields an event leaves out: clear them first.
	clear(r.ev.Recipients[:cap(r.ev.Recipients)])
	r.ev = QueueEvent{Recipients: r.ev.Recipients[:0]}
	r.env = QueueEnvelope{Recipients: r.env.Recipients[:0]}
	d := decoder{shared: true, env: &r.env}
	if err := d.any(data, &r.ev); err != nil {
		return nil, err
	}
	return &r.ev, nil
}

// any decodes either form.
func (d *decoder) any(data []byte, ev *QueueEvent) error {
	i := 0
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n') {
		i++
	}
	switch {
	case i < len(data) && data[i] == '{':
		if err := json.Unmarshal(data, ev); err != nil {
			return fmt.Errorf("queue event: %w", err)
		}
		return nil
	case len(data) > 0 && uint64(data[0]) == protowire.EncodeTag(evSchema, protowire.VarintType):
		if err := d.event(data, ev); err != nil {
			return fmt.Errorf("queue event: %w", err)
		}
		return nil
	}
	return ErrEventEncoding
}

// decoder reads protobuf fields; shared makes its strings alias the input,
// and env, when set, is the envelope to decode into.
type decoder struct {
	shared bool
	env    *QueueEnvelope
}

func (d *decoder) str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if d.shared {
		return unsafe.String(&b[0], len(b))
	}
	return string(b)
}

// enum is str for a field whose values are few and known: those cost no
// allocation even when copying.
func (d *decoder) enum(b []byte) string {
	if s, ok := knownStrings[string(b)]; ok { // the lookup does not allocate
		return s
	}
	return d.str(b)
}

// field is one decoded field: v for varints, b for length-delimited.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   uint64
	b   []byte
}

// next consumes one field of data, returning the rest.
func next(data []byte) (field, []byte, error) {
	num, typ, n := protowire.ConsumeTag(data)
	if n < 0 {
		return field{}, nil, protowire.ParseError(n)
	}
	data = data[n:]
	f := field{num: num, typ: typ}
	switch typ {
	case protowire.VarintType:
		f.v, n = protowire.ConsumeVarint(data)
	case protowire.BytesType:
		f.b, n = protowire.ConsumeBytes(data)
	default:
		n = protowire.ConsumeFieldValue(num, typ, data)
	}
	if n < 0 {
		return field{}, nil, protowire.ParseError(n)
	}
	return f, data[n:], nil
}

func unixNano(v uint64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(v)).UTC()
}

func (d *decoder) event(data []byte, ev *QueueEvent) error {
	for len(data) > 0 {
		f, rest, err := next(data)
		if err != nil {
			return err
		}
		data = rest
		// A field of an unexpected wire type is skipped as unknown, as
		// protobuf's own decoders do.
		if f.typ == protowire.VarintType {
			switch f.num {
			case evTime:
				ev.Time = unixNano(f.v)
			case evAttempt:
				ev.Attempt = uint32(f.v)
			case evStarted:
				ev.Started = unixNano(f.v)
			case evNextAttempt:
				ev.NextAttempt = unixNano(f.v)
			}
			continue
		}
		if f.typ != protowire.BytesType {
			continue
		}
		switch f.num {
		case evType:
			ev.Type = d.enum(f.b)
		case evQueueID:
			ev.QueueID = d.str(f.b)
		case evJobID:
			ev.JobID = d.str(f.b)
		case evState:
			ev.State = d.enum(f.b)
		case evPriority:
			ev.Priority = d.enum(f.b)
		case evTraceID:
			ev.TraceID = d.str(f.b)
		case evInstance:
			ev.Instance = d.str(f.b)
		case evActor:
			ev.Actor = d.str(f.b)
		case evEnvelope:
			if ev.Envelope == nil {
				ev.Envelope = d.env
				if ev.Envelope == nil {
					ev.Envelope = &QueueEnvelope{}
				}
			}
			// Fields of a message that occurs twice merge, as in protobuf.
			if err := d.envelope(f.b, ev.Envelope); err != nil {
				return err
			}
		case evReason:
			ev.Reason = d.enum(f.b)
		case evError:
			ev.Error = d.str(f.b)
		case evRemoteHost:
			ev.RemoteHost = d.str(f.b)
		case evRecipients:
			var r QueueRecipientResult
			if err := d.recipient(f.b, &r); err != nil {
				return err
			}
			ev.Recipients = append(ev.Recipients, r)
		case evNote:
			ev.Note = d.str(f.b)
		}
	}
	return nil
}

func (d *decoder) envelope(data []byte, env *QueueEnvelope) error {
	for len(data) > 0 {
		f, rest, err := next(data)
		if err != nil {
			return err
		}
		data = rest
		switch f.typ {
		case protowire.VarintType:
			switch f.num {
			case envSize:
				env.Size = int64(f.v)
			case envReceived:
				env.Received = unixNano(f.v)
			case envExpires:
				env.Expires = unixNano(f.v)
			case envJobsTotal:
				env.JobsTotal = uint32(f.v)
			case envRequireTLS:
				env.RequireTLS = f.v != 0
			case envSMTPUTF8:
				env.SMTPUTF8 = f.v != 0
			case envIsDSN:
				env.IsDSN = f.v != 0
			}
		case protowire.BytesType:
			switch f.num {
			case envSender:
				env.Sender = d.str(f.b)
			case envRecipients:
				env.Recipients = append(env.Recipients, d.str(f.b))
			case envDomain:
				env.Domain = d.str(f.b)
			case envENVID:
				env.ENVID = d.str(f.b)
			case envRET:
				env.RET = d.enum(f.b)
			}
		}
	}
	return nil
}

func (d *decoder) recipient(data []byte, r *QueueRecipientResult) error {
	for len(data) > 0 {
		f, rest, err := next(data)
		if err != nil {
			return err
		}
		data = rest
		if f.typ != protowire.BytesType {
			continue
		}
		switch f.num {
		case rrAddress:
			r.Address = d.str(f.b)
		case rrOutcome:
			r.Outcome = d.enum(f.b)
		case rrReason:
			r.Reason = d.enum(f.b)
		case rrReply:
			r.Reply = d.str(f.b)
		case rrRemoteHost:
			r.RemoteHost = d.str(f.b)
		case rrTLS:
			if err := d.tls(f.b, &r.TLS); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *decoder) tls(data []byte, t *QueueTLS) error {
	for len(data) > 0 {
		f, rest, err := next(data)
		if err != nil {
			return err
		}
		data = rest
		if f.typ != protowire.BytesType {
			continue
		}
		switch f.num {
		case tlsPolicy:
			t.Policy = d.enum(f.b)
		case tlsVersion:
			t.Version = d.enum(f.b)
		case tlsCipher:
			t.Cipher = d.enum(f.b)
		case tlsVerifiedBy:
			t.VerifiedBy = d.enum(f.b)
		case tlsReported:
			t.Reported = d.str(f.b)
		}
	}
	return nil
}

// knownStrings are the values of the enumerated string fields (types,
// states, classes, outcomes, reasons, RET).
var knownStrings = func() map[string]string {
	m := map[string]string{}
	for _, s := range []string{
		"received", "scheduled", "attempt", "delivered", "deferred", "bounced", "expired", "held",
		"released", "deleted", "reprioritised", "throttled",
		StateReady, StateActive, StateDeferred, StateHeld, StateDone,
		"high", "normal", "bulk", "failed",
		"dns", "connect", "tls", "remote", "timeout", "protocol", "null_mx", "no_domain", "internal", "require_tls",
		"FULL", "HDRS",
		"none", "may", "encrypt", "verify", "dane", "mta-sts enforce", "mta-sts testing",
		"1.2", "1.3", "webpki", "dane-ee", "dane-ta",
		"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
		"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
		"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
		"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
	} {
		m[s] = s
	}
	return m
}()
