package tbgateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/thingsgate/tbgateway/internal/jsonx"
	"github.com/thingsgate/tbgateway/internal/outbox"
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
	// Values and Points together must hold at least one key, and no key
	// twice. Values are sent in key order, then Points in their order.
	Values Values
	// Points are values given as typed points, the form for streaming: an
	// entry of points that reuses its slice costs no allocation, where a
	// map boxes each number it holds.
	Points []Point
	// Metadata, if set, feeds ThingsBoard's gateway latency metrics.
	Metadata *Metadata
}

// At returns an Entry for values measured at t (millisecond precision).
func At(t time.Time, values Values) Entry {
	return Entry{TS: t.UnixMilli(), Values: values}
}

// Point is one named value of an Entry, made by Int, Int64, Uint64,
// Float64, Bool, String or Any. The zero Point has no value and is refused.
type Point struct {
	Key  string // the telemetry key
	kind pointKind
	num  uint64 // the bits of an Int64, Uint64, Float64 or Bool
	str  string
	obj  any
}

type pointKind uint8

const (
	pointNone pointKind = iota
	pointInt
	pointUint
	pointFloat
	pointBool
	pointString
	pointAny
)

// Int returns a Point of an integer value.
func Int(key string, v int) Point { return Int64(key, int64(v)) }

// Int64 returns a Point of an integer value.
func Int64(key string, v int64) Point { return Point{Key: key, kind: pointInt, num: uint64(v)} }

// Uint64 returns a Point of an unsigned integer value.
func Uint64(key string, v uint64) Point { return Point{Key: key, kind: pointUint, num: v} }

// Float64 returns a Point of a float value, sent with a decimal point or an
// exponent even when integral, like a float64 in Values. NaN and ±Inf are
// refused when the entry is published.
func Float64(key string, v float64) Point {
	return Point{Key: key, kind: pointFloat, num: math.Float64bits(v)}
}

// Bool returns a Point of a boolean value.
func Bool(key string, v bool) Point {
	var n uint64
	if v {
		n = 1
	}
	return Point{Key: key, kind: pointBool, num: n}
}

// String returns a Point of a string value.
func String(key, v string) Point { return Point{Key: key, kind: pointString, str: v} }

// Any returns a Point of any value Values accepts, encoded the same way.
func Any(key string, v any) Point { return Point{Key: key, kind: pointAny, obj: v} }

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

// PublishTelemetry sends entries for several devices on
// v1/gateway/telemetry. Devices not yet connected are created by
// ThingsBoard with the "default" profile; call Connect first to choose one.
// Everything is validated before anything is queued. The data goes out in
// one message, or in several when it is larger than the server's maximum
// payload size, possibly together with data of other calls (coalescing).
//
// It blocks until the server has acknowledged all of it (PUBACK at QoS 1:
// queued at the server, not yet stored) or ctx ends; a ctx without
// deadline gets the request timeout. While the connection is down the data
// waits in the outbound queue: an error wrapping ErrEnqueued means the
// data is still queued and will be sent. See PublishTelemetryAsync to
// stream without waiting.
func (g *Gateway) PublishTelemetry(ctx context.Context, t Telemetry) error {
	recs, err := g.telemetryRecords(t)
	if err != nil {
		return err
	}
	return g.send(ctx, recs)
}

// PublishTelemetryAsync queues t like PublishTelemetry but returns as soon
// as the data is accepted into the outbound queue (and, with
// WithQueueStore, written to its store). The data is encoded before it
// returns, so t and its entries may be reused at once. done, if not nil, is called once
// with the outcome: nil when the server acknowledged all of it. ctx bounds
// only the wait for room in a full queue (WithQueue).
func (g *Gateway) PublishTelemetryAsync(ctx context.Context, t Telemetry, done func(error)) error {
	recs, err := g.telemetryRecords(t)
	if err != nil {
		return err
	}
	return g.enqueue(ctx, recs, done)
}

func (g *Gateway) telemetryRecords(t Telemetry) ([]*outbox.Record, error) {
	e := getEncoder()
	defer e.release()
	return e.telemetryRecords(t, g.limit())
}

// encoder builds payloads into a reused buffer; it is pooled so that steady
// publishing allocates only the final payload copy.
type encoder struct {
	buf   []byte
	s     jsonx.Scratch
	names []string
	items []item
	// The key order of the last values encoded, and the keys quoted.
	order      []string
	quotedKeys []string
	// The keys of the last points encoded, checked, and the keys quoted.
	pointKeys   []string
	pointQuoted []string
	pointSet    map[string]struct{}
	// slab is where record bodies are carved from (keep), and records the
	// records (record).
	slab    []byte
	records []outbox.Record
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
	e.items = e.items[:0]
	encoders.Put(e)
}

// payload copies the encoded bytes: paho keeps the slice until the PUBACK.
func (e *encoder) payload() []byte { return bytes.Clone(e.buf) }

// Bodies of up to slabMax bytes are copied into a shared slab of slabSize
// rather than allocated one by one: a stream of small records then costs
// one allocation per slabSize bytes, and nothing for the GC to scan. A slab
// lives while any body carved from it does; bodies carved together are
// queued and acknowledged together, so little is held for long.
const (
	slabSize = 16 << 10
	slabMax  = 1 << 10
)

// recordChunk is how many records are allocated at once: one allocation
// instead of one per call. A chunk lives while any of its records does,
// like a slab. It is as many as fill 6 KiB, one of the allocator's size
// classes, which a round count would not (32 records take 5.5 KiB of 6).
const recordChunk = 6 << 10 / int(unsafe.Sizeof(outbox.Record{}))

// record returns a new zero record.
func (e *encoder) record() *outbox.Record {
	if len(e.records) == 0 {
		e.records = make([]outbox.Record, recordChunk)
	}
	r := &e.records[0]
	e.records = e.records[1:]
	return r
}

// keep returns an immutable copy of b, which the encoder reuses.
func (e *encoder) keep(b []byte) []byte {
	if len(b) > slabMax {
		return bytes.Clone(b)
	}
	if cap(e.slab)-len(e.slab) < len(b) {
		e.slab = make([]byte, 0, slabSize)
	}
	n := len(e.slab)
	e.slab = append(e.slab, b...)
	return e.slab[n:len(e.slab):len(e.slab)]
}

// sizeLimit is what one message may weigh: the server's maximum remaining
// length, at the gateway's QoS.
type sizeLimit struct {
	max       int
	qos       byte
	maxPoints int // data points one message may carry; 0: no limit
}

// telemetryRecords encodes t as one record per device, or more where a
// device's entries do not fit in one message.
func (e *encoder) telemetryRecords(t Telemetry, lim sizeLimit) ([]*outbox.Record, error) {
	if len(t) == 0 {
		return nil, fmt.Errorf("%w: no device", ErrNoData)
	}
	if len(t) == 1 { // the common case needs no sorting
		for name, entries := range t {
			return e.deviceRecords(nil, name, "", entries, lim)
		}
	}
	e.names = sortedNames(e.names, t)
	recs := make([]*outbox.Record, 0, len(e.names))
	for _, name := range e.names {
		var err error
		if recs, err = e.deviceRecords(recs, name, "", t[name], lim); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// deviceRecords encodes one device's entries. quoted is the name as a JSON
// string, or "" to have it quoted here.
func (e *encoder) deviceRecords(recs []*outbox.Record, name, quoted string, entries []Entry, lim sizeLimit) ([]*outbox.Record, error) {
	if err := checkDeviceName(name); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, &ValueError{Device: name, Err: fmt.Errorf("%w: no telemetry entries", ErrNoData)}
	}
	e.buf, e.items = e.buf[:0], e.items[:0]
	for i := range entries {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		start := len(e.buf)
		if err := e.entry(name, &entries[i]); err != nil {
			return nil, err
		}
		e.items = append(e.items, item{start, len(e.buf), entries[i].points()})
	}
	if quoted == "" {
		quoted = quotedName(name)
	}
	return e.split(recs, outbox.Telemetry, name, quoted, lim)
}

// item is one encoded entry or attribute in e.buf.
type item struct{ start, end, points int }

// split cuts the items in e.buf into records of device name (dev quoted)
// that each fit in a message alone, counting sizes on the encoded bytes. An item that cannot
// fit even alone is refused with a *PayloadTooLargeError.
func (e *encoder) split(recs []*outbox.Record, kind outbox.Kind, name, dev string, lim sizeLimit) ([]*outbox.Record, error) {
	fixed := outbox.Overhead(kind.Topic(), lim.qos) + len(dev) + 5 // {"dev":[...]}
	first, size, points := 0, fixed, 0
	flush := func(last int) {
		body := e.keep(e.buf[e.items[first].start:e.items[last].end])
		r := e.record()
		r.Kind, r.Device, r.DeviceName, r.Body, r.Points = kind, dev, name, body, points
		if recs == nil {
			recs = r.Alone() // a call of one record needs no slice of its own
		} else {
			recs = append(recs, r)
		}
	}
	for i, it := range e.items {
		n := it.end - it.start
		if fixed+n > lim.max {
			return nil, &PayloadTooLargeError{Topic: kind.Topic(), Size: fixed + n, Limit: lim.max}
		}
		if lim.maxPoints > 0 && it.points > lim.maxPoints {
			return nil, &ValueError{Device: name, Err: fmt.Errorf("%w: an entry of %d data points exceeds the rate limit's burst of %d", ErrRateLimit, it.points, lim.maxPoints)}
		}
		if i > first {
			n++ // comma
		}
		if size+n > lim.max || (lim.maxPoints > 0 && points+it.points > lim.maxPoints) {
			flush(i - 1)
			first, size, points = i, fixed, 0
			n = it.end - it.start
		}
		size += n
		points += it.points
	}
	flush(len(e.items) - 1)
	return recs, nil
}

// quoted caches device names as JSON strings: a gateway sends for the same
// devices over and over, and quoting is per call otherwise.
var quoted sync.Map

// quotedCap bounds the cache; past it names are quoted each time.
const quotedCap = 200_000

var quotedLen atomic.Int64

func quotedName(name string) string {
	if q, ok := quoted.Load(name); ok {
		return q.(string)
	}
	q := string(jsonx.AppendString(nil, name))
	if quotedLen.Load() < quotedCap {
		if _, loaded := quoted.LoadOrStore(name, q); !loaded {
			quotedLen.Add(1)
		}
	}
	return q
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
			if en.has(k) {
				return &ValueError{Device: device, Key: k, Err: fmt.Errorf("%w: %q is reserved in an entry without timestamp", ErrInvalidKey, k)}
			}
		}
		n := len(e.buf)
		if err := e.object(device, en); err != nil {
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
	b := append(e.buf, `{"ts":`...)
	b = strconv.AppendInt(b, en.TS, 10)
	e.buf = append(b, `,"values":`...)
	if err := e.object(device, en); err != nil {
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
	e.buf = append(e.buf, '{')
	if err := e.members(device, v, false); err != nil {
		return err
	}
	e.buf = append(e.buf, '}')
	return nil
}

// points is the number of data points of the entry.
func (en *Entry) points() int { return len(en.Values) + len(en.Points) }

// has reports whether the entry holds key.
func (en *Entry) has(key string) bool {
	if _, ok := en.Values[key]; ok {
		return true
	}
	for i := range en.Points {
		if en.Points[i].Key == key {
			return true
		}
	}
	return false
}

// object writes the values of an entry: its Values, then its Points.
func (e *encoder) object(device string, en *Entry) error {
	if len(en.Points) == 0 {
		return e.values(device, en.Values)
	}
	e.buf = append(e.buf, '{')
	if len(en.Values) > 0 {
		if err := e.members(device, en.Values, false); err != nil {
			return err
		}
		e.buf = append(e.buf, ',')
	}
	if err := e.checkPointKeys(device, en); err != nil {
		return err
	}
	var bad int
	var err error
	// One store to e.buf, not one per append: while the GC runs, every
	// pointer stored into the heap encoder costs a write barrier.
	e.buf, bad, err = appendPoints(e.buf, en.Points, e.pointQuoted, &e.s)
	if err != nil {
		return valueError(device, en.Points[bad].Key, err)
	}
	return nil
}

// appendPoints appends the members of ps and the closing brace, keys
// already quoted; on error it returns the index of the point at fault.
func appendPoints(b []byte, ps []Point, quoted []string, s *jsonx.Scratch) ([]byte, int, error) {
	for i := range ps {
		p := &ps[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, quoted[i]...)
		var err error
		switch p.kind {
		case pointInt:
			b = strconv.AppendInt(b, int64(p.num), 10)
		case pointUint:
			b = strconv.AppendUint(b, p.num, 10)
		case pointFloat:
			b, err = jsonx.AppendFloat(b, math.Float64frombits(p.num), 64)
		case pointBool:
			b = strconv.AppendBool(b, p.num != 0)
		case pointString:
			b = jsonx.AppendString(b, p.str)
		case pointAny:
			b, err = jsonx.AppendValue(b, p.obj, s)
		default:
			err = errNoPointValue
		}
		if err != nil {
			return b, i, err
		}
	}
	return append(b, '}'), 0, nil
}

// seen reports whether k is among e.pointKeys, of an entry of n points: a
// scan for the few points of an entry, a set for many.
func (e *encoder) seen(k string, n int) bool {
	if n <= 16 {
		return slices.Contains(e.pointKeys, k)
	}
	if e.pointSet == nil {
		e.pointSet = make(map[string]struct{}, n)
	}
	if _, ok := e.pointSet[k]; ok {
		return true
	}
	e.pointSet[k] = struct{}{}
	return false
}

var errNoPointValue = errors.New("point without value (use Int64, Float64... to make one)")

// checkPointKeys checks the keys of the entry's points and leaves them
// quoted in e.pointQuoted. A stream repeats its keys call after call, so
// keys equal to the last ones checked are known good and already quoted;
// only the entry's Values, if any, are checked against them anew.
func (e *encoder) checkPointKeys(device string, en *Entry) error {
	if !sameKeys(en.Points, e.pointKeys) {
		e.pointKeys, e.pointQuoted = e.pointKeys[:0], e.pointQuoted[:0]
		err := e.quotePointKeys(device, en.Points)
		clear(e.pointSet)
		if err != nil {
			e.pointKeys = e.pointKeys[:0] // not for the next call
			return err
		}
	}
	for _, k := range e.pointKeys {
		if _, dup := en.Values[k]; dup {
			return &ValueError{Device: device, Key: k, Err: fmt.Errorf("%w: key given twice", ErrInvalidKey)}
		}
	}
	return nil
}

// sameKeys reports whether ps has exactly keys, in order.
func sameKeys(ps []Point, keys []string) bool {
	if len(ps) != len(keys) {
		return false
	}
	for i := range ps {
		if ps[i].Key != keys[i] {
			return false
		}
	}
	return true
}

func (e *encoder) quotePointKeys(device string, ps []Point) error {
	for i := range ps {
		k := ps[i].Key
		if err := checkKey(device, k); err != nil {
			return err
		}
		if e.seen(k, len(ps)) {
			return &ValueError{Device: device, Key: k, Err: fmt.Errorf("%w: key given twice", ErrInvalidKey)}
		}
		e.pointKeys = append(e.pointKeys, k)
		e.pointQuoted = append(e.pointQuoted, string(append(jsonx.AppendString(nil, k), ':')))
	}
	return nil
}

// members writes the "key":value members of v, comma-separated, in key
// order; with track it records each member in e.items.
func (e *encoder) members(device string, v Values, track bool) error {
	if len(v) == 0 {
		return &ValueError{Device: device, Err: fmt.Errorf("%w: no values", ErrNoData)}
	}
	if e.membersCached(device, v, track) {
		return nil
	}
	keys := e.s.SortedKeys(v)
	defer e.s.Release(keys)
	if err := e.membersInOrder(device, v, keys, track); err != nil {
		return err
	}
	// Remember the order: entries of one stream nearly always carry the
	// same keys, and then sorting and quoting them again is wasted.
	e.order = append(e.order[:0], keys...)
	e.quotedKeys = e.quotedKeys[:0]
	for _, k := range keys {
		e.quotedKeys = append(e.quotedKeys, string(append(jsonx.AppendString(nil, k), ':')))
	}
	return nil
}

// membersCached encodes v with the key order of the previous values if v
// has exactly those keys, and reports whether it did. A map with as many
// keys, all of them found, is the same key set, so the order is the sorted
// one.
func (e *encoder) membersCached(device string, v Values, track bool) bool {
	if len(e.order) != len(v) {
		return false
	}
	// b rather than e.buf, stored once: see object.
	b, mark, items := e.buf, len(e.buf), len(e.items)
	for i, k := range e.order {
		val, ok := v[k]
		if !ok {
			e.buf, e.items = b[:mark], e.items[:items]
			return false
		}
		if i > 0 {
			b = append(b, ',')
		}
		start := len(b)
		b = append(b, e.quotedKeys[i]...)
		var err error
		if b, err = jsonx.AppendValue(b, val, &e.s); err != nil {
			// Let the general path report it.
			e.buf, e.items = b[:mark], e.items[:items]
			return false
		}
		if track {
			e.items = append(e.items, item{start, len(b), 1})
		}
	}
	e.buf = b
	return true
}

func (e *encoder) membersInOrder(device string, v Values, keys []string, track bool) error {
	for i, k := range keys {
		if err := checkKey(device, k); err != nil {
			return err
		}
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		start := len(e.buf)
		e.buf = jsonx.AppendString(e.buf, k)
		e.buf = append(e.buf, ':')
		var err error
		if e.buf, err = jsonx.AppendValue(e.buf, v[k], &e.s); err != nil {
			return valueError(device, k, err)
		}
		if track {
			e.items = append(e.items, item{start, len(e.buf), 1})
		}
	}
	return nil
}

// checkKey refuses a key that cannot be sent: empty, or not UTF-8, which
// would go out as U+FFFD and could then be the same key as another.
func checkKey(device, k string) error {
	if k == "" {
		return &ValueError{Device: device, Err: fmt.Errorf("%w: empty key", ErrInvalidKey)}
	}
	if !utf8.ValidString(k) {
		return &ValueError{Device: device, Key: strings.ToValidUTF8(k, "\uFFFD"), Err: fmt.Errorf("%w: key is not valid UTF-8", ErrInvalidKey)}
	}
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
	if !utf8.ValidString(name) {
		// Sent as U+FFFD, it could be the name of another device.
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidDeviceName, name)
	}
	if len(name) > maxDeviceName && utf8.RuneCountInString(name) > maxDeviceName {
		return fmt.Errorf("%w: %q is longer than %d characters", ErrInvalidDeviceName, name[:32]+"...", maxDeviceName)
	}
	return nil
}
