package tbgateway

import (
	"fmt"
	"math"
	"time"

	"github.com/thingsgate/tbgateway/internal/outbox"
)

// The helpers shared by the package-internal tests (package tbgateway);
// the external tests have theirs in helpers_test.go.

func ms(v int64) time.Time { return time.UnixMilli(v) }

func encodeWith(f func(e *encoder) error) (string, error) {
	e := getEncoder()
	defer e.release()
	err := f(e)
	return string(e.payload()), err
}

// Whole-payload encoders for the golden files, vectors and fuzz targets:
// the records of a call packed into one message, as the sender does.

// unlimited is the size limit of encoders used for whole payloads.
var unlimited = sizeLimit{max: math.MaxInt, qos: 1}

// pack joins records into one payload.
func (e *encoder) pack(recs []*outbox.Record, err error) error {
	if err != nil {
		return err
	}
	m, n := outbox.Pack(recs, math.MaxInt, 0, 1, true)
	if n != len(recs) {
		return fmt.Errorf("packed %d of %d records", n, len(recs))
	}
	e.buf = append(e.buf[:0], m.Payload...)
	return nil
}

func (e *encoder) gatewayTelemetry(t Telemetry) error {
	return e.pack(e.telemetryRecords(t, unlimited))
}

func (e *encoder) deviceTelemetry(name string, entries []Entry) error {
	return e.gatewayTelemetry(Telemetry{name: entries})
}

// gatewayAttributes encodes a as one payload.
func (e *encoder) gatewayAttributes(a Attributes) error {
	return e.pack(e.attributeRecords(a, unlimited))
}

// benchEntries makes entries of keys values, integers and floats in turn.
func benchEntries(entries, keys int) []Entry {
	es := make([]Entry, entries)
	for i := range es {
		v := make(Values, keys)
		for k := 0; k < keys; k++ {
			if k%2 == 0 {
				v[fmt.Sprintf("key%d", k)] = int64(i * k)
			} else {
				v[fmt.Sprintf("key%d", k)] = float64(i) + 0.25
			}
		}
		es[i] = Entry{TS: 1700000000000 + int64(i), Values: v}
	}
	return es
}

// benchPointEntries is benchEntries with the values as Points.
func benchPointEntries(entries, keys int) []Entry {
	es := make([]Entry, entries)
	for i := range es {
		ps := make([]Point, keys)
		for k := range ps {
			if k%2 == 0 {
				ps[k] = Int64(fmt.Sprintf("key%d", k), int64(i*k))
			} else {
				ps[k] = Float64(fmt.Sprintf("key%d", k), float64(i)+0.25)
			}
		}
		es[i] = Entry{TS: 1700000000000 + int64(i), Points: ps}
	}
	return es
}
