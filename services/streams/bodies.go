package streams

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// A large body lives in an object store bucket: its chunks on
// $O.<bucket>.C.<nuid>, its metadata (name, size, digest, and the nuid
// that links the two) on $O.<bucket>.M.<name>. nats.go's object store
// deletes an object by looking its metadata up (a read of the block that
// holds it: for the bodies' stream an 8 MiB block, loaded whole when it
// is not in memory), writing a deletion marker in its place, which stays
// in the stream until it ages out, and purging the chunks. The ingress
// records the nuid in the Message when it stores the body, so DeleteBody
// needs neither the lookup nor the marker.

// ObjectStream is the name of the stream nats.go's object store keeps
// bucket in.
func ObjectStream(bucket string) string { return "OBJ_" + bucket }

// chunkSubject is the subject of the chunks of the object whose chunk id is
// nuid; metaSubject that of the metadata of the object called name.
func chunkSubject(bucket, nuid string) string { return "$O." + bucket + ".C." + nuid }

func metaSubject(bucket, name string) string {
	return "$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name))
}

// DeleteBody removes object name, whose chunks are nuid, from bucket: its
// chunks, then its metadata, each purged by the bucket stream's leader, so
// that nothing is looked up first and no deletion marker is written. It is
// idempotent: a body already gone is not an error, and the leader's
// answer makes that authoritative (as ObjectGone is).
func DeleteBody(ctx context.Context, js jetstream.JetStream, bucket, name, nuid string) error {
	stream := ObjectStream(bucket)
	if err := purgeSubject(ctx, js, stream, chunkSubject(bucket, nuid)); err != nil {
		return fmt.Errorf("delete body object %s: chunks: %w", name, err)
	}
	if err := purgeSubject(ctx, js, stream, metaSubject(bucket, name)); err != nil {
		return fmt.Errorf("delete body object %s: metadata: %w", name, err)
	}
	return nil
}

// purgeSubject purges every message on subject from stream.
func purgeSubject(ctx context.Context, js jetstream.JetStream, stream, subject string) error {
	data, err := json.Marshal(struct {
		Filter string `json:"filter"`
	}{subject})
	if err != nil {
		return err
	}
	done, err := actionRequest(ctx, js, "STREAM.PURGE."+stream, data)
	if err != nil {
		return err
	}
	if !done {
		return errors.New("the stream's leader did not purge")
	}
	return nil
}
