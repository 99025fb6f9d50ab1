package admin

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)

// fullEvent sets every field of an event and its envelope.
func fullEvent() *QueueEvent {
	return &QueueEvent{
		Type: "deferred", Time: t0, QueueID: "0000000000000000000000Q1", JobID: "0000000000000000000000Q1-3",
		State: StateDeferred, Attempt: 4, Priority: "bulk", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736",
		Instance: "deliverer-2", Actor: "root@ops", Reason: "remote", Error: "451 4.7.1 greylisted",
		RemoteHost: "mx1.dest.test", Started: t0.Add(-time.Second), NextAttempt: t0.Add(10 * time.Minute), Note: "retry now",
		Envelope: &QueueEnvelope{
			Sender: "a@o.test", Recipients: []string{"x@dest.test", "", "Y@Dest.Test"}, Domain: "dest.test", Size: 1 << 33,
			Received: t0.Add(-time.Hour), Expires: t0.Add(119 * time.Hour), JobsTotal: 7, ENVID: "e1", RET: "HDRS",
			RequireTLS: true, SMTPUTF8: true, IsDSN: true,
		},
		Recipients: []QueueRecipientResult{
			{Address: "x@dest.test", Outcome: "delivered", RemoteHost: "mx1.dest.test", TLS: QueueTLS{
				Policy: "mta-sts testing", Version: "1.3", Cipher: "TLS_AES_128_GCM_SHA256", VerifiedBy: "webpki",
				Reported: "mx1.dest.test: certificate expired",
			}},
			{Address: "Y@Dest.Test", Outcome: "deferred", Reason: "remote", Reply: "451 4.7.1 greylisted", RemoteHost: "mx1.dest.test"},
		},
	}
}

// same reports whether two events say the same: times compare as
// instants, and the encodings of absent and empty lists are one.
func same(a, b *QueueEvent) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestQueueEventRoundTrip(t *testing.T) {
	for _, ev := range []*QueueEvent{
		fullEvent(),
		{Type: "held", JobID: "Q-0"},
		{Type: "received", Envelope: &QueueEnvelope{}},
	} {
		data := MarshalQueueEvent(ev)
		if data[0] != 0x08 {
			t.Fatalf("encoded event starts with %#x, want 0x08", data[0])
		}
		if len(data) != sizeEvent(ev) {
			t.Errorf("size %d, encoded %d bytes", sizeEvent(ev), len(data))
		}
		var got QueueEvent
		if err := UnmarshalQueueEvent(data, &got); err != nil {
			t.Fatal(err)
		}
		if !same(&got, ev) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, *ev)
		}
		var r EventReader
		shared, err := r.Read(data)
		if err != nil {
			t.Fatal(err)
		}
		if !same(shared, ev) {
			t.Errorf("EventReader:\n got %+v\nwant %+v", *shared, *ev)
		}
	}
}

// TestQueueEventMatchesSchema checks the hand-written codec against the
// code protoc generates from sluice.proto, both ways.
func TestQueueEventMatchesSchema(t *testing.T) {
	ev := fullEvent()
	var pb sluicev1.QueueEvent
	if err := proto.Unmarshal(MarshalQueueEvent(ev), &pb); err != nil {
		t.Fatal(err)
	}
	env := pb.GetEnvelope()
	if pb.GetSchema() != 1 || pb.GetType() != ev.Type || pb.GetTimeUnixNano() != ev.Time.UnixNano() ||
		pb.GetQueueId() != ev.QueueID || pb.GetJobId() != ev.JobID || pb.GetState() != ev.State ||
		pb.GetAttempt() != ev.Attempt || pb.GetPriority() != ev.Priority || pb.GetTraceId() != ev.TraceID ||
		pb.GetInstance() != ev.Instance || pb.GetActor() != ev.Actor || pb.GetReason() != ev.Reason ||
		pb.GetError() != ev.Error || pb.GetRemoteHost() != ev.RemoteHost ||
		pb.GetStartedUnixNano() != ev.Started.UnixNano() || pb.GetNextAttemptUnixNano() != ev.NextAttempt.UnixNano() ||
		pb.GetNote() != ev.Note || len(pb.GetRecipients()) != 2 ||
		pb.GetRecipients()[1].GetReply() != ev.Recipients[1].Reply || pb.GetRecipients()[0].GetOutcome() != "delivered" ||
		pb.GetRecipients()[0].GetTls().GetPolicy() != "mta-sts testing" || pb.GetRecipients()[0].GetTls().GetVersion() != "1.3" ||
		pb.GetRecipients()[0].GetTls().GetCipher() != "TLS_AES_128_GCM_SHA256" ||
		pb.GetRecipients()[0].GetTls().GetVerifiedBy() != "webpki" ||
		pb.GetRecipients()[0].GetTls().GetReported() != ev.Recipients[0].TLS.Reported || pb.GetRecipients()[1].GetTls() != nil ||
		env.GetSender() != ev.Envelope.Sender || !reflect.DeepEqual(env.GetRecipients(), ev.Envelope.Recipients) ||
		env.GetDomain() != ev.Envelope.Domain || env.GetSize() != ev.Envelope.Size ||
		env.GetReceivedUnixNano() != ev.Envelope.Received.UnixNano() || env.GetExpiresUnixNano() != ev.Envelope.Expires.UnixNano() ||
		env.GetJobsTotal() != 7 || env.GetEnvid() != "e1" || env.GetRet() != "HDRS" || !env.GetRequireTls() ||
		!env.GetSmtputf8() || !env.GetIsDsn() {
		t.Fatalf("generated code reads %v", &pb)
	}
	// And what the generated code writes (in its own field order), this
	// code reads.
	data, err := proto.Marshal(&pb)
	if err != nil {
		t.Fatal(err)
	}
	var got QueueEvent
	if err := UnmarshalQueueEvent(data, &got); err != nil {
		t.Fatal(err)
	}
	if !same(&got, ev) {
		t.Errorf("from generated code:\n got %+v\nwant %+v", got, *ev)
	}
}

// TestQueueEventOldJSON reads an event as every service wrote them before
// the protobuf form (testdata/event-json.json, a deferred event of that
// time), as a stream that kept it for days still holds it.
func TestQueueEventOldJSON(t *testing.T) {
	data, err := os.ReadFile("testdata/event-json.json")
	if err != nil {
		t.Fatal(err)
	}
	var want QueueEvent
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	if want.Type != "deferred" || len(want.Recipients) != 1 || want.NextAttempt.IsZero() {
		t.Fatalf("testdata: %+v", want)
	}
	var got QueueEvent
	if err := UnmarshalQueueEvent(data, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	var r EventReader
	shared, err := r.Read(data)
	if err != nil || !reflect.DeepEqual(*shared, want) {
		t.Errorf("EventReader: %v %+v", err, shared)
	}
	// A JSON event after a protobuf one, and the other way round, through
	// one reader: nothing of the previous event shows.
	for _, d := range [][]byte{MarshalQueueEvent(fullEvent()), data, MarshalQueueEvent(&QueueEvent{Type: "held"})} {
		ev, err := r.Read(d)
		if err != nil {
			t.Fatal(err)
		}
		var fresh QueueEvent
		_ = UnmarshalQueueEvent(d, &fresh)
		if !same(ev, &fresh) {
			t.Errorf("reused reader: got %+v, want %+v", *ev, fresh)
		}
	}
	if ev, _ := r.Read(MarshalQueueEvent(&QueueEvent{Type: "held"})); ev.Envelope != nil || len(ev.Recipients) != 0 {
		t.Errorf("reused reader kept an envelope or recipients: %+v", *ev)
	}
}

func TestQueueEventBadInput(t *testing.T) {
	for _, data := range [][]byte{nil, {}, []byte("x"), {0x08}, {0x08, 0x01, 0x12, 0x05, 'a'}, []byte("{"), {0x08, 0x01, 0x62, 0x02, 0x0a, 0x09}} {
		var ev QueueEvent
		if err := UnmarshalQueueEvent(data, &ev); err == nil {
			t.Errorf("%q: no error", data)
		}
	}
	// Unknown fields of any wire type are skipped.
	data := MarshalQueueEvent(&QueueEvent{Type: "held"})
	data = append(data, 0xa8, 0x06, 0x05, 0xb5, 0x06, 1, 2, 3, 4, 0xb1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8, 0xba, 0x06, 0x01, 'z')
	var ev QueueEvent
	if err := UnmarshalQueueEvent(data, &ev); err != nil || ev.Type != "held" {
		t.Errorf("unknown fields: %v %+v", err, ev)
	}
}

// TestEventReaderAllocatesNothing: folding millions of events must not
// allocate per event (the count is exact, not timed).
func TestEventReaderAllocatesNothing(t *testing.T) {
	rec := MarshalQueueEvent(&QueueEvent{Type: "received", JobID: "Q-0", Priority: "normal", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736",
		Envelope: &QueueEnvelope{Sender: "a@o.test", Recipients: []string{"x@dest.test"}, Domain: "dest.test", Received: t0}})
	def := MarshalQueueEvent(fullEvent())
	var r EventReader
	if n := testing.AllocsPerRun(100, func() {
		_, _ = r.Read(rec)
		_, _ = r.Read(def)
	}); n != 0 {
		t.Errorf("%v allocations per two events", n)
	}
}

func BenchmarkQueueEventDecode(b *testing.B) {
	ev := fullEvent()
	pb := MarshalQueueEvent(ev)
	js, _ := json.Marshal(ev)
	b.Run("protobuf-reader", func(b *testing.B) {
		var r EventReader
		for b.Loop() {
			_, _ = r.Read(pb)
		}
	})
	b.Run("protobuf-copy", func(b *testing.B) {
		for b.Loop() {
			var e QueueEvent
			_ = UnmarshalQueueEvent(pb, &e)
		}
	})
	b.Run("json", func(b *testing.B) {
		for b.Loop() {
			var e QueueEvent
			_ = UnmarshalQueueEvent(js, &e)
		}
	})
}

func FuzzUnmarshalQueueEvent(f *testing.F) {
	f.Add(MarshalQueueEvent(fullEvent()))
	f.Add(MarshalQueueEvent(&QueueEvent{Type: "held"}))
	if js, err := os.ReadFile("testdata/event-json.json"); err == nil {
		f.Add(js)
	}
	f.Add([]byte(`{"type":"received","envelope":{"recipients":["a@b"]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev QueueEvent
		if err := UnmarshalQueueEvent(data, &ev); err != nil {
			return
		}
		var r EventReader
		shared, err := r.Read(data)
		if err != nil || !same(shared, &ev) {
			t.Fatalf("EventReader disagrees: %v\n%+v\n%+v", err, shared, ev)
		}
		// What was read is written and read back the same.
		enc := MarshalQueueEvent(&ev)
		var back QueueEvent
		if err := UnmarshalQueueEvent(enc, &back); err != nil {
			t.Fatalf("re-encoded event: %v", err)
		}
		if again := MarshalQueueEvent(&back); !bytes.Equal(again, enc) {
			t.Fatalf("not stable:\n%x\n%x", enc, again)
		}
	})
}
