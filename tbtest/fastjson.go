package tbtest

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

// The ingest fast path. A gateway telemetry payload of the usual shape,
// {"Device":[{"ts":N,"values":{…}} or {flat…}, …], …} with plain numbers,
// booleans and strings, is parsed here in one pass, with the JSON checked
// on the way and nothing allocated per point. Anything else – an escape,
// an exponent, a numeric-looking string, a duplicate key, metadata, an
// error of any kind – makes it give up, and the payload takes the general
// path (validJSON, members, convertTelemetry), which is the reference: for
// every payload the fast path accepts, both store exactly the same points
// (FuzzFastTelemetry checks it).

// fastParser holds the result of the last parse; it is reused for the
// publishes of one connection, which are processed one at a time.
type fastParser struct {
	devices []fastDevice
	points  []fastPoint
	keys    [][]byte // keys of the object being parsed, for duplicates
	scratch []byte   // json.Compact output
}

type fastDevice struct {
	name     []byte
	from, to int // its points: points[from:to]
}

type fastPoint struct {
	key []byte
	ts  int64
	v   value
}

// maxFastDepth bounds the nesting of JSON values parsed on the fast path.
const maxFastDepth = 32

// telemetry parses a v1/gateway/telemetry payload; false means "use the
// general path".
func (p *fastParser) telemetry(b []byte, nowMs int64) bool {
	p.devices, p.points = p.devices[:0], p.points[:0]
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipSpace(b, i+1)
	if i >= len(b) || b[i] == '}' {
		return false
	}
	for {
		name, j, ok := plainString(b, i)
		if !ok {
			return false
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipSpace(b, i+1)
		if i >= len(b) || b[i] != '[' {
			return false
		}
		i = skipSpace(b, i+1)
		if i >= len(b) || b[i] == ']' {
			return false // an empty array is never acknowledged: general path
		}
		dev := fastDevice{name: name, from: len(p.points)}
		for {
			if i >= len(b) || b[i] != '{' {
				return false
			}
			if i, ok = p.item(b, i, nowMs); !ok {
				return false
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return false
			}
			if b[i] == ']' {
				break
			}
			if b[i] != ',' {
				return false
			}
			i = skipSpace(b, i+1)
		}
		dev.to = len(p.points)
		for _, d := range p.devices {
			if bytes.Equal(d.name, name) {
				return false // a repeated device key: the general path merges
			}
		}
		p.devices = append(p.devices, dev)
		i = skipSpace(b, i+1)
		if i >= len(b) {
			return false
		}
		if b[i] == '}' {
			break
		}
		if b[i] != ',' {
			return false
		}
		i = skipSpace(b, i+1)
	}
	return skipSpace(b, i+1) == len(b)
}

// item parses one telemetry item at b[i] == '{': either exactly
// {"ts":<long>,"values":{…}} (in any order) or a flat object with none of
// the keys ts, values and metadata.
func (p *fastParser) item(b []byte, i int, nowMs int64) (int, bool) {
	start := len(p.points)
	p.keys = p.keys[:0]
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true // {}: no point
	}
	hasTS, hasValues, flat := false, false, false
	var ts int64
	valuesAt := -1
	for {
		key, j, ok := plainString(b, i)
		if !ok || p.seen(key) {
			return 0, false
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return 0, false
		}
		i = skipSpace(b, i+1)
		switch string(key) {
		case "ts":
			if ts, i, ok = plainLong(b, i); !ok {
				return 0, false
			}
			hasTS = true
		case "values":
			if i >= len(b) || b[i] != '{' {
				return 0, false
			}
			valuesAt = i
			if i, ok = skipValue(b, i, 0); !ok {
				return 0, false
			}
			hasValues = true
		case "metadata":
			return 0, false
		default:
			var v value
			var null bool
			if v, null, i, ok = p.scalar(b, i); !ok {
				return 0, false
			}
			flat = true
			if !null {
				p.points = append(p.points, fastPoint{key: key, ts: nowMs, v: v})
			}
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return 0, false
		}
		if b[i] == '}' {
			break
		}
		if b[i] != ',' {
			return 0, false
		}
		i = skipSpace(b, i+1)
	}
	end := i + 1
	if !hasTS && !hasValues {
		return end, true // flat
	}
	if flat || !hasTS || !hasValues {
		return 0, false // ts or values alone, or with other keys: general path
	}
	p.points = p.points[:start]
	if _, ok := p.values(b, valuesAt, ts); !ok {
		return 0, false
	}
	return end, true
}

// values parses the "values" object at b[i] == '{' into points at ts.
func (p *fastParser) values(b []byte, i int, ts int64) (int, bool) {
	p.keys = p.keys[:0]
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		key, j, ok := plainString(b, i)
		if !ok || p.seen(key) {
			return 0, false
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return 0, false
		}
		var v value
		var null bool
		if v, null, i, ok = p.scalar(b, skipSpace(b, i+1)); !ok {
			return 0, false
		}
		if !null {
			p.points = append(p.points, fastPoint{key: key, ts: ts, v: v})
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return 0, false
		}
		if b[i] == '}' {
			return i + 1, true
		}
		if b[i] != ',' {
			return 0, false
		}
		i = skipSpace(b, i+1)
	}
}

// seen records key among the current object's keys and reports a repeat.
func (p *fastParser) seen(key []byte) bool {
	for _, k := range p.keys {
		if bytes.Equal(k, key) {
			return true
		}
	}
	p.keys = append(p.keys, key)
	return false
}

// scalar parses one value typed as JsonConverter types it (WIRE §2.4);
// null reports JSON null (skipped by the server).
func (p *fastParser) scalar(b []byte, i int) (v value, null bool, end int, ok bool) {
	if i >= len(b) {
		return value{}, false, 0, false
	}
	switch c := b[i]; {
	case c == '"':
		s, j, ok := plainString(b, i)
		if !ok || isParsableBytes(s) {
			return value{}, false, 0, false // numeric strings are cast: general path
		}
		return value{kind: vString, str: string(s)}, false, j, true
	case c == 't':
		if bytes.HasPrefix(b[i:], []byte("true")) {
			return boolValue(true), false, i + 4, true
		}
	case c == 'f':
		if bytes.HasPrefix(b[i:], []byte("false")) {
			return boolValue(false), false, i + 5, true
		}
	case c == 'n':
		if bytes.HasPrefix(b[i:], []byte("null")) {
			return value{}, true, i + 4, true
		}
	case c == '-' || c >= '0' && c <= '9':
		return plainNumber(b, i)
	case c == '{' || c == '[':
		j, ok := skipValue(b, i, 0)
		if !ok {
			return value{}, false, 0, false
		}
		span := b[i:j]
		p.scratch = p.scratch[:0]
		buf := bytes.NewBuffer(p.scratch)
		if json.Compact(buf, span) != nil {
			return value{}, false, 0, false
		}
		p.scratch = buf.Bytes()
		return value{kind: vJSON, str: string(p.scratch)}, false, j, true
	}
	return value{}, false, 0, false
}

// plainNumber parses a JSON number without exponent: an integer of at most
// 18 digits is a long; with a fraction of at most 16 digits a double
// (JsonConverter: a '.' without exponent makes a double, more than 16
// decimals a string). Everything else goes the general way.
func plainNumber(b []byte, i int) (value, bool, int, bool) {
	start := i
	if b[i] == '-' {
		i++
	}
	intStart := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	intDigits := i - intStart
	if intDigits == 0 || intDigits > 1 && b[intStart] == '0' {
		return value{}, false, 0, false
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		return value{}, false, 0, false
	}
	if i >= len(b) || b[i] != '.' {
		if intDigits > 18 {
			return value{}, false, 0, false
		}
		n, err := strconv.ParseInt(unsafeString(b[start:i]), 10, 64)
		if err != nil {
			return value{}, false, 0, false
		}
		return longValue(n), false, i, true
	}
	i++
	fracStart := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	frac := i - fracStart
	if frac == 0 || frac > 16 || intDigits > 16 || i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		return value{}, false, 0, false
	}
	f, err := strconv.ParseFloat(unsafeString(b[start:i]), 64)
	if err != nil {
		return value{}, false, 0, false
	}
	return doubleValue(f), false, i, true
}

// plainLong parses an integer literal of at most 18 digits (the "ts").
func plainLong(b []byte, i int) (int64, int, bool) {
	if i >= len(b) {
		return 0, 0, false
	}
	v, _, j, ok := plainNumber(b, i)
	if !ok || v.kind != vLong {
		return 0, 0, false
	}
	return int64(v.num), j, true
}

// plainString returns the bytes of the JSON string at b[i] == '"' when it
// has no escape and is valid UTF-8 (so that it reads the same decoded).
func plainString(b []byte, i int) (s []byte, end int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	i++
	start := i
	ascii := true
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			s = b[start:i]
			if !ascii && !utf8.Valid(s) {
				return nil, 0, false
			}
			return s, i + 1, true
		case c == '\\' || c < 0x20:
			return nil, 0, false
		case c >= 0x80:
			ascii = false
		}
		i++
	}
	return nil, 0, false
}

// skipValue checks the JSON value at b[i] and returns its end.
func skipValue(b []byte, i, depth int) (int, bool) {
	if i >= len(b) || depth > maxFastDepth {
		return 0, false
	}
	switch c := b[i]; {
	case c == '{' || c == '[':
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == closing {
			return i + 1, true
		}
		for {
			var ok bool
			if c == '{' {
				if i, ok = skipString(b, i); !ok {
					return 0, false
				}
				i = skipSpace(b, i)
				if i >= len(b) || b[i] != ':' {
					return 0, false
				}
				i = skipSpace(b, i+1)
			}
			if i, ok = skipValue(b, i, depth+1); !ok {
				return 0, false
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return 0, false
			}
			if b[i] == closing {
				return i + 1, true
			}
			if b[i] != ',' {
				return 0, false
			}
			i = skipSpace(b, i+1)
		}
	case c == '"':
		return skipString(b, i)
	case c == 't':
		return i + 4, bytes.HasPrefix(b[i:], []byte("true"))
	case c == 'f':
		return i + 5, bytes.HasPrefix(b[i:], []byte("false"))
	case c == 'n':
		return i + 4, bytes.HasPrefix(b[i:], []byte("null"))
	case c == '-' || c >= '0' && c <= '9':
		return skipNumber(b, i)
	}
	return 0, false
}

// skipString checks a JSON string (escapes included) at b[i] == '"'.
func skipString(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, false
	}
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return 0, false
		case c == '\\':
			i++
			if i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) {
					return 0, false
				}
				for _, h := range b[i+1 : i+5] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return 0, false
					}
				}
				i += 4
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

// skipNumber checks a JSON number (exponent allowed).
func skipNumber(b []byte, i int) (int, bool) {
	if b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	start := i
	n := digits()
	if n == 0 || n > 1 && b[start] == '0' {
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return 0, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return 0, false
		}
	}
	return i, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// isParsableBytes is isParsable without a string conversion.
func isParsableBytes(b []byte) bool { return isParsable(unsafeString(b)) }

// unsafeString views b as a string for a call that does not keep it.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
