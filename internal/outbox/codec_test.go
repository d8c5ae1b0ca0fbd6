package outbox

import (
	"bytes"
	"testing"
)

// FuzzDecodeRecord: whatever a store hands back decodes to a record or an
// error, never a panic, and a record that decodes survives encoding and
// decoding again unchanged (the input may spell a varint longer than
// needed, so its bytes may differ).
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range []*Record{
		{Kind: Raw, Topic: "v1/gateway/connect", Body: []byte(`{"device":"A"}`), DeviceName: "A", Note: "profile"},
		{Kind: Telemetry, Device: `"A"`, DeviceName: "A", Body: []byte(`{"ts":1,"values":{"t":1}}`), Points: 1},
		{Kind: Attributes, Device: `"B"`, DeviceName: "B", Body: []byte(`"fw":"1.0"`), Points: 1},
	} {
		b := AppendRecord(nil, r)
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{recordVersion, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		if err != nil {
			return
		}
		enc := AppendRecord(nil, r)
		if len(enc) > RecordSize(r) {
			t.Fatalf("RecordSize under the encoding's length")
		}
		again, err := DecodeRecord(enc)
		if err != nil {
			t.Fatalf("%q does not decode: %v", enc, err)
		}
		if again.Kind != r.Kind || again.Topic != r.Topic || again.Device != r.Device || again.DeviceName != r.DeviceName ||
			again.Note != r.Note || again.Points != r.Points || !bytes.Equal(again.Body, r.Body) {
			t.Fatalf("%+v came back as %+v", r, again)
		}
	})
}
