package tbgateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/thingsgate/tbgateway/internal/jsonx"
)

const topicGatewayTelemetry = "v1/gateway/telemetry"

// Values maps telemetry or attribute keys to values. A value may be a bool,
// a string, any integer or float type, json.Number, json.RawMessage, or a
// nested map[string]any, []any, struct, map or slice (sent as a JSON value).
// Integers are sent as integers and floats always with a decimal point or an
// exponent (3.0, not 3), because ThingsBoard stores "3" as a long and "3.0"
// as a double. NaN, ±Inf, nil and types with no JSON form are refused.
type Values map[string]any

// Entry is one telemetry record: values with an optional timestamp.
type Entry struct {
	// TS is the time of the values in milliseconds since the Unix epoch.
	// Zero sends the values as a flat object, which ThingsBoard stores at
	// its own receive time.
	TS int64
	// Values must hold at least one key.
	Values Values
	// Metadata, if set, feeds ThingsBoard's gateway latency metrics.
	Metadata *Metadata
}

// At returns an Entry for values measured at t (millisecond precision).
func At(t time.Time, values Values) Entry {
	return Entry{TS: t.UnixMilli(), Values: values}
}

// Metadata describes where an entry came from; ThingsBoard aggregates it
// into the gateway's gatewayMetrics telemetry (latency per connector).
type Metadata struct {
	Connector   string    // required: the connector's name
	ReceivedAt  time.Time // required: when the gateway got the data from the device
	PublishedAt time.Time // when it was published; zero means at encoding time
}

// Telemetry maps device names to their entries, for one message that
// carries data of several devices.
type Telemetry map[string][]Entry

// PublishTelemetry sends entries for several devices in one
// v1/gateway/telemetry message. Devices not yet connected are created by
// ThingsBoard with the "default" profile; call Connect first to choose one.
// Everything is validated before anything is sent. At QoS 1 it blocks until
// the server's PUBACK (which means queued at the server, not stored) or ctx
// ends; while the connection is down it returns ErrNotConnected.
func (g *Gateway) PublishTelemetry(ctx context.Context, t Telemetry) error {
	e := getEncoder()
	defer e.release()
	if err := e.gatewayTelemetry(t); err != nil {
		return err
	}
	return g.publish(ctx, topicGatewayTelemetry, e.payload())
}

// PublishTelemetry sends entries for this device; see
// Gateway.PublishTelemetry.
func (d *Device) PublishTelemetry(ctx context.Context, entries ...Entry) error {
	e := getEncoder()
	defer e.release()
	if err := e.deviceTelemetry(d.name, entries); err != nil {
		return err
	}
	return d.g.publish(ctx, topicGatewayTelemetry, e.payload())
}

// PublishTelemetry sends the gateway's own telemetry on
// v1/devices/me/telemetry; see Gateway.PublishTelemetry for blocking and
// offline behaviour.
func (s *GatewayDevice) PublishTelemetry(ctx context.Context, entries ...Entry) error {
	e := getEncoder()
	defer e.release()
	if err := e.selfTelemetry(entries); err != nil {
		return err
	}
	return s.g.publish(ctx, topicSelfTelemetry, e.payload())
}

// encoder builds payloads into a reused buffer; it is pooled so that steady
// publishing allocates only the final payload copy.
type encoder struct {
	buf   []byte
	s     jsonx.Scratch
	names []string
}

var encoders = sync.Pool{New: func() any { return new(encoder) }}

func getEncoder() *encoder {
	e := encoders.Get().(*encoder)
	e.buf = e.buf[:0]
	return e
}

func (e *encoder) release() {
	if cap(e.buf) > 1<<20 {
		e.buf = nil
	}
	clear(e.names)
	e.names = e.names[:0]
	encoders.Put(e)
}

// payload copies the encoded bytes: paho keeps the slice until the PUBACK.
func (e *encoder) payload() []byte { return bytes.Clone(e.buf) }

func (e *encoder) gatewayTelemetry(t Telemetry) error {
	if len(t) == 0 {
		return fmt.Errorf("%w: no device", ErrNoData)
	}
	e.names = sortedNames(e.names, t)
	names := e.names
	e.buf = append(e.buf, '{')
	for i, name := range names {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		if err := e.deviceEntries(name, t[name]); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, '}')
	return nil
}

func (e *encoder) deviceTelemetry(name string, entries []Entry) error {
	e.buf = append(e.buf, '{')
	if err := e.deviceEntries(name, entries); err != nil {
		return err
	}
	e.buf = append(e.buf, '}')
	return nil
}

// deviceEntries writes "name":[entry,...]. ThingsBoard never acknowledges
// an empty array, so no entries is an error.
func (e *encoder) deviceEntries(name string, entries []Entry) error {
	if err := checkDeviceName(name); err != nil {
		return err
	}
	if len(entries) == 0 {
		return &ValueError{Device: name, Err: fmt.Errorf("%w: no telemetry entries", ErrNoData)}
	}
	e.buf = jsonx.AppendString(e.buf, name)
	e.buf = append(e.buf, ':', '[')
	for i := range entries {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		if err := e.entry(name, &entries[i]); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, ']')
	return nil
}

func (e *encoder) selfTelemetry(entries []Entry) error {
	switch len(entries) {
	case 0:
		return fmt.Errorf("%w: no telemetry entries", ErrNoData)
	case 1:
		return e.entry("", &entries[0])
	}
	e.buf = append(e.buf, '[')
	for i := range entries {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		if err := e.entry("", &entries[i]); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, ']')
	return nil
}

// entry writes {"ts":..,"values":{..}} or, without a timestamp, the flat
// object the server stores at receive time.
func (e *encoder) entry(device string, en *Entry) error {
	if en.TS < 0 {
		return &ValueError{Device: device, Key: "ts", Err: fmt.Errorf("%w: negative timestamp %d", ErrInvalidValue, en.TS)}
	}
	if en.TS == 0 {
		// The server strips "metadata" from an entry as latency data, and a
		// flat {"values":...} is a mistake for the timestamped form that
		// would be stored as one JSON key named "values" (with "ts" beside
		// it, it would be read as the timestamped form).
		for _, k := range [...]string{"metadata", "values"} {
			if _, ok := en.Values[k]; ok {
				return &ValueError{Device: device, Key: k, Err: fmt.Errorf("%w: %q is reserved in an entry without timestamp", ErrInvalidKey, k)}
			}
		}
		n := len(e.buf)
		if err := e.values(device, en.Values); err != nil {
			return err
		}
		if en.Metadata != nil {
			e.buf = e.buf[:len(e.buf)-1] // reopen the object
			e.buf = append(e.buf, `,"metadata":`...)
			if err := e.metadata(device, en.Metadata); err != nil {
				e.buf = e.buf[:n]
				return err
			}
			e.buf = append(e.buf, '}')
		}
		return nil
	}
	e.buf = append(e.buf, `{"ts":`...)
	e.buf = strconv.AppendInt(e.buf, en.TS, 10)
	e.buf = append(e.buf, `,"values":`...)
	if err := e.values(device, en.Values); err != nil {
		return err
	}
	if en.Metadata != nil {
		e.buf = append(e.buf, `,"metadata":`...)
		if err := e.metadata(device, en.Metadata); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, '}')
	return nil
}

func (e *encoder) metadata(device string, m *Metadata) error {
	if m.Connector == "" {
		return &ValueError{Device: device, Key: "metadata", Err: fmt.Errorf("%w: metadata without connector", ErrInvalidValue)}
	}
	if m.ReceivedAt.IsZero() {
		return &ValueError{Device: device, Key: "metadata", Err: fmt.Errorf("%w: metadata without ReceivedAt", ErrInvalidValue)}
	}
	pub := m.PublishedAt
	if pub.IsZero() {
		pub = time.Now()
	}
	e.buf = append(e.buf, `{"connector":`...)
	e.buf = jsonx.AppendString(e.buf, m.Connector)
	e.buf = append(e.buf, `,"receivedTs":`...)
	e.buf = strconv.AppendInt(e.buf, m.ReceivedAt.UnixMilli(), 10)
	e.buf = append(e.buf, `,"publishedTs":`...)
	e.buf = strconv.AppendInt(e.buf, pub.UnixMilli(), 10)
	e.buf = append(e.buf, '}')
	return nil
}

// values writes a non-empty object of named values, keys sorted so that the
// same data always gives the same bytes.
func (e *encoder) values(device string, v Values) error {
	if len(v) == 0 {
		return &ValueError{Device: device, Err: fmt.Errorf("%w: no values", ErrNoData)}
	}
	keys := e.s.SortedKeys(v)
	defer e.s.Release(keys)
	e.buf = append(e.buf, '{')
	for i, k := range keys {
		if k == "" {
			return &ValueError{Device: device, Err: fmt.Errorf("%w: empty key", ErrInvalidKey)}
		}
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.buf = jsonx.AppendString(e.buf, k)
		e.buf = append(e.buf, ':')
		var err error
		if e.buf, err = jsonx.AppendValue(e.buf, v[k], &e.s); err != nil {
			return valueError(device, k, err)
		}
	}
	e.buf = append(e.buf, '}')
	return nil
}

// sortedNames appends the map's keys to dst[:0] in order.
func sortedNames[M ~map[string]V, V any](dst []string, m M) []string {
	dst = dst[:0]
	for k := range m {
		dst = append(dst, k)
	}
	slices.Sort(dst)
	return dst
}

// valueError turns an encoder error into a *ValueError with the public
// sentinel it stands for.
func valueError(device, key string, err error) error {
	var sentinel error
	switch {
	case errors.Is(err, jsonx.ErrUnsupported):
		sentinel = ErrUnsupportedType
	default:
		sentinel = ErrInvalidValue
	}
	var ke *jsonx.KeyError
	inner := err
	for errors.As(inner, &ke) {
		inner = ke.Err
	}
	return &ValueError{Device: device, Key: key, Err: fmt.Errorf("%w: %v", sentinel, inner)}
}

// maxDeviceName is the length limit of a ThingsBoard device name.
const maxDeviceName = 255

func checkDeviceName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", ErrInvalidDeviceName)
	}
	if utf8.RuneCountInString(name) > maxDeviceName {
		return fmt.Errorf("%w: %q is longer than %d characters", ErrInvalidDeviceName, name[:32]+"...", maxDeviceName)
	}
	return nil
}
