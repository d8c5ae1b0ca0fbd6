package outbox

import (
	"encoding/binary"
	"errors"
)

// The encoding of a record for a durable store: a version byte, the kind,
// the four strings as uvarint-length-prefixed bytes, the points as a
// uvarint, then the body.

const recordVersion = 1

// RecordSize is the length of r's encoding, at most.
func RecordSize(r *Record) int {
	return 2 + len(r.Topic) + len(r.Device) + len(r.DeviceName) + len(r.Note) + len(r.Body) + 5*binary.MaxVarintLen64
}

// AppendRecord appends r's encoding to dst.
func AppendRecord(dst []byte, r *Record) []byte {
	b := append(dst, recordVersion, byte(r.Kind))
	for _, s := range []string{r.Topic, r.Device, r.DeviceName, r.Note} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(r.Points))
	return append(b, r.Body...)
}

// DecodeRecord reads a record AppendRecord wrote; damaged input is an
// error, never a panic.
func DecodeRecord(b []byte) (*Record, error) {
	if len(b) < 2 || b[0] != recordVersion {
		return nil, errors.New("unknown record format")
	}
	if Kind(b[1]) > Attributes {
		return nil, errors.New("unknown record kind")
	}
	r := &Record{Kind: Kind(b[1])}
	b = b[2:]
	for _, dst := range []*string{&r.Topic, &r.Device, &r.DeviceName, &r.Note} {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return nil, errors.New("truncated record")
		}
		*dst = string(b[k : k+int(n)])
		b = b[k+int(n):]
	}
	p, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, errors.New("truncated record")
	}
	if p > 1<<31 {
		return nil, errors.New("implausible point count")
	}
	r.Points = int(p)
	r.Body = append([]byte(nil), b[k:]...)
	if r.Kind == Raw && r.Topic == "" {
		return nil, errors.New("whole message without a topic")
	}
	if r.Kind != Raw && r.Device == "" {
		return nil, errors.New("data record without a device")
	}
	return r, nil
}
