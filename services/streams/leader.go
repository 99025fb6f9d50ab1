package streams

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Every stream Sluice makes allows direct gets, and nats.go reads a
// message with one whenever the stream allows it: any replica answers, the
// nearest first. A replica that was frozen or partitioned keeps answering
// after it comes back, from its old state, until it has caught up: it says
// "no message found" about messages stored while it was away. A direct get
// is fine for reading what is there (a stale miss is tried again), never
// for deciding that something is gone. LeaderMsg and ObjectGone ask the
// stream's leader, which answers only from the current state.
//
// Seen for real: a node of three frozen for 30 s (SIGSTOP) and thawed
// answered the scheduler's check after a failed delete, and five
// delivered messages stayed in SLUICE_MSGS for ever.

// codeNoMessage is JetStream's error code for "no message found"
// (JSNoMessageFoundErr), codeSeqNotFound for "sequence N not found".
const (
	codeNoMessage   = 10037
	codeSeqNotFound = 10043
)

type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s (status %d, error %d)", e.Description, e.Code, e.ErrCode)
}

type storedMsg struct {
	Subject string    `json:"subject"`
	Seq     uint64    `json:"seq"`
	Header  []byte    `json:"hdrs,omitempty"`
	Data    []byte    `json:"data,omitempty"`
	Time    time.Time `json:"time"`
}

// apiPrefix is the subject prefix of js's API requests.
func apiPrefix(js jetstream.JetStream) string {
	o := js.Options()
	switch {
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	}
	return jetstream.DefaultAPIPrefix
}

// apiRequest sends a request to JetStream's API (api is the subject after
// the prefix, e.g. "STREAM.PURGE.<stream>"), bounded by 5 s unless ctx
// has a deadline.
func apiRequest(ctx context.Context, js jetstream.JetStream, api string, data []byte) (*nats.Msg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	return js.Conn().RequestWithContext(ctx, apiPrefix(js)+api, data)
}

// actionRequest sends an API request whose answer says whether it was
// done ("success"), and returns that, or the error the answer holds.
func actionRequest(ctx context.Context, js jetstream.JetStream, api string, data []byte) (bool, error) {
	reply, err := apiRequest(ctx, js, api, data)
	if err != nil {
		return false, err
	}
	var resp struct {
		Error   *apiError `json:"error,omitempty"`
		Success bool      `json:"success"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return false, err
	}
	if resp.Error != nil {
		return false, resp.Error
	}
	return resp.Success, nil
}

// LeaderMsg reads message seq of stream, or with seq 0 the last message on
// subject, from the stream's leader. A message the leader does not hold is
// jetstream.ErrMsgNotFound: it is gone (or was never stored).
func LeaderMsg(ctx context.Context, js jetstream.JetStream, stream string, seq uint64, subject string) (*jetstream.RawStreamMsg, error) {
	req := getRequest{Seq: seq}
	if seq == 0 {
		req.LastFor = subject
	}
	return leaderGet(ctx, js, stream, req)
}

// LeaderKey reads key of the key-value bucket from its stream's leader,
// where kv.Get may be answered by a replica that is behind (direct get).
// A key never stored, or whose last record is a delete or purge marker,
// is not found.
func LeaderKey(ctx context.Context, js jetstream.JetStream, bucket, key string) (value []byte, found bool, err error) {
	m, err := LeaderMsg(ctx, js, "KV_"+bucket, 0, "$KV."+bucket+"."+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if op := m.Header.Get(kvOperation); op == "DEL" || op == "PURGE" {
		return nil, false, nil
	}
	return m.Data, true, nil
}

// kvOperation is the header that marks a key-value record as a delete or
// a purge (JetStream's key-value layout).
const kvOperation = "KV-Operation"

// getRequest is the body of a stream's message get ($JS.API.STREAM.MSG.GET).
type getRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"` // the first message from Seq on this subject
}

func leaderGet(ctx context.Context, js jetstream.JetStream, stream string, req getRequest) (*jetstream.RawStreamMsg, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	reply, err := apiRequest(ctx, js, "STREAM.MSG.GET."+stream, data)
	if err != nil {
		return nil, fmt.Errorf("get message from the leader of %s: %w", stream, err)
	}
	var resp struct {
		Error   *apiError  `json:"error,omitempty"`
		Message *storedMsg `json:"message,omitempty"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, fmt.Errorf("get message from the leader of %s: %w", stream, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == codeNoMessage || resp.Error.ErrCode == codeSeqNotFound {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, fmt.Errorf("get message from the leader of %s: %w", stream, resp.Error)
	}
	if resp.Message == nil {
		return nil, fmt.Errorf("get message from the leader of %s: empty answer", stream)
	}
	m := &jetstream.RawStreamMsg{Subject: resp.Message.Subject, Sequence: resp.Message.Seq, Data: resp.Message.Data, Time: resp.Message.Time}
	if len(resp.Message.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return nil, fmt.Errorf("get message from the leader of %s: headers: %w", stream, err)
		}
		m.Header = h
	}
	return m, nil
}

// DeleteMsg deletes message seq of stream and reports whether it was
// there: (true, nil) deleted now, (false, nil) the leader did not hold it
// (deleted before, e.g. by an earlier try whose answer was lost), or an
// error when the outcome is unknown. The leader answers a delete, so a
// missing message is authoritative.
func DeleteMsg(ctx context.Context, s jetstream.Stream, seq uint64) (bool, error) {
	err := s.DeleteMsg(ctx, seq)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrMsgNotFound),
		errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) && deleteFoundNothing(err):
		return false, nil
	}
	return false, err
}

// deleteFoundNothing reads nats.go's text of a delete refused because the
// message is not there: the API error's code does not survive its wrapping.
func deleteFoundNothing(err error) bool {
	s := err.Error()
	return strings.Contains(s, "err_code=10043") || strings.Contains(s, "description=no message found")
}

// ObjectGone reports whether the object store bucket's leader says object
// name is absent or deleted. A direct read's "not found" is checked with it
// before content is declared lost.
func ObjectGone(ctx context.Context, js jetstream.JetStream, bucket, name string) (bool, error) {
	m, err := LeaderMsg(ctx, js, ObjectStream(bucket), 0, metaSubject(bucket, name))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	var info struct {
		Deleted bool `json:"deleted,omitempty"`
	}
	if err := json.Unmarshal(m.Data, &info); err != nil {
		return false, fmt.Errorf("object %s: meta: %w", name, err)
	}
	return info.Deleted, nil
}
