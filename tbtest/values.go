package tbtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strconv"
	"strings"
)

// This file types values the way ThingsBoard's JsonConverter does (WIRE §2.4)
// and renders stored values the way the server prints them in downlinks
// (Gson: longs as integers, doubles as Java's Double.toString, JSON embedded).

var errBadNumber = errors.New("tbtest: cannot convert number")

// typeJSON converts one JSON value (valid JSON text) into a stored value:
// bool, string, int64, float64 or json.RawMessage (compact JSON for objects and
// arrays). ok is false for JSON null, which the server skips silently.
func typeJSON(raw []byte) (v any, ok bool, err error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, false, nil
	}
	switch raw[0] {
	case 'n':
		return nil, false, nil
	case 't':
		return true, true, nil
	case 'f':
		return false, true, nil
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, false, err
		}
		if isParsable(s) {
			if n, err := typeNumber(s); err == nil {
				return n, true, nil
			}
		}
		return s, true, nil
	case '{', '[':
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			return nil, false, err
		}
		return json.RawMessage(b.Bytes()), true, nil
	default:
		n, err := typeNumber(string(raw))
		if err != nil {
			return nil, false, err
		}
		return n, true, nil
	}
}

// isParsable mirrors commons-lang3 NumberUtils.isParsable, which gates the
// numeric-string cast: an optional '-', ASCII digits and at most one '.',
// not ending with '.'; no exponent, no '+'.
func isParsable(s string) bool {
	if s == "" || s[len(s)-1] == '.' {
		return false
	}
	i := 0
	if s[0] == '-' {
		if len(s) == 1 {
			return false
		}
		i = 1
	}
	dots := 0
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.':
			dots++
			if dots > 1 {
				return false
			}
		case c < '0' || c > '9':
			return false
		}
	}
	return true
}

// decimal is a BigDecimal: unscaled * 10^-scale.
type decimal struct {
	unscaled *big.Int
	scale    int
}

func parseDecimal(text string) (decimal, error) {
	s := text
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	exp := 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(s[i+1:])
		if err != nil || e > 1000 || e < -1000 {
			return decimal{}, errBadNumber
		}
		exp = e
		s = s[:i]
	}
	intPart, frac, _ := strings.Cut(s, ".")
	digits := intPart + frac
	if digits == "" {
		return decimal{}, errBadNumber
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return decimal{}, errBadNumber
		}
	}
	u, ok := new(big.Int).SetString(digits, 10)
	if !ok {
		return decimal{}, errBadNumber
	}
	if neg {
		u.Neg(u)
	}
	return decimal{unscaled: u, scale: len(frac) - exp}, nil
}

func (d decimal) stripTrailingZeros() decimal {
	u := new(big.Int).Set(d.unscaled)
	scale := d.scale
	if u.Sign() == 0 {
		return decimal{unscaled: u, scale: 0}
	}
	ten := big.NewInt(10)
	q, r := new(big.Int), new(big.Int)
	for {
		q.QuoRem(u, ten, r)
		if r.Sign() != 0 {
			break
		}
		u.Set(q)
		scale--
	}
	return decimal{unscaled: u, scale: scale}
}

// plain is BigDecimal.toPlainString.
func (d decimal) plain() string {
	neg := d.unscaled.Sign() < 0
	digits := new(big.Int).Abs(d.unscaled).String()
	var s string
	switch {
	case d.scale <= 0:
		s = digits + strings.Repeat("0", -d.scale)
	case len(digits) > d.scale:
		s = digits[:len(digits)-d.scale] + "." + digits[len(digits)-d.scale:]
	default:
		s = "0." + strings.Repeat("0", d.scale-len(digits)) + digits
	}
	if neg {
		s = "-" + s
	}
	return s
}

// typeNumber is JsonConverter.buildNumericKeyValueProto with type cast
// enabled: an integral value is a long unless written with a '.' and no
// exponent; out of long range it becomes its plain string; a non-integral
// value is a double if it has at most 16 decimals, else its plain string.
func typeNumber(text string) (any, error) {
	d, err := parseDecimal(text)
	if err != nil {
		return nil, err
	}
	stripped := d.stripTrailingZeros()
	simpleDouble := strings.Contains(text, ".") && !strings.ContainsAny(text, "eE")
	if stripped.scale <= 0 && !simpleDouble {
		v := new(big.Int).Set(stripped.unscaled)
		if stripped.scale < 0 {
			v.Mul(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(-stripped.scale)), nil))
		}
		if v.IsInt64() {
			return v.Int64(), nil
		}
		return d.plain(), nil
	}
	if d.scale <= 16 {
		f, err := strconv.ParseFloat(strings.TrimPrefix(text, "+"), 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return nil, errBadNumber
		}
		return f, nil
	}
	return d.plain(), nil
}

// typeGo converts a Go value given to the server API (SetSharedAttributes…)
// into a stored value. Go floats stay doubles and Go integers longs (no
// guessing from the JSON text); strings are kept as strings; json.Number and
// json.RawMessage are typed as the server types uplink JSON; anything else is
// marshalled to JSON and typed from that. ok is false for nil.
func typeGo(v any) (out any, ok bool, err error) {
	switch x := v.(type) {
	case nil:
		return nil, false, nil
	case bool:
		return x, true, nil
	case string:
		return x, true, nil
	case int:
		return int64(x), true, nil
	case int8:
		return int64(x), true, nil
	case int16:
		return int64(x), true, nil
	case int32:
		return int64(x), true, nil
	case int64:
		return x, true, nil
	case uint:
		return typeUint(uint64(x)), true, nil
	case uint8:
		return int64(x), true, nil
	case uint16:
		return int64(x), true, nil
	case uint32:
		return int64(x), true, nil
	case uint64:
		return typeUint(x), true, nil
	case float32:
		f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
		return typeFloat(f), true, nil
	case float64:
		return typeFloat(x), true, nil
	case json.Number:
		n, err := typeNumber(string(x))
		return n, err == nil, err
	case json.RawMessage:
		if !json.Valid(x) {
			return nil, false, fmt.Errorf("tbtest: invalid JSON value %q", string(x))
		}
		return typeJSON(x)
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
		return nil, false, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, false, err
	}
	return typeJSON(b)
}

func typeUint(u uint64) any {
	if u > math.MaxInt64 {
		return strconv.FormatUint(u, 10)
	}
	return int64(u)
}

// typeFloat keeps finite doubles; NaN and infinities cannot travel in JSON,
// so they are stored as the strings Java would print.
func typeFloat(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return javaDouble(f)
	}
	return f
}

// javaDouble formats f as Java's Double.toString does (Gson prints stored
// doubles that way): "42.0", "0.001", "1.0E7", "1.0E-4".
func javaDouble(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	if a := math.Abs(f); a >= 1e-3 && a < 1e7 {
		s := strconv.FormatFloat(f, 'f', -1, 64)
		if !strings.Contains(s, ".") {
			s += ".0"
		}
		return s
	}
	s := strconv.FormatFloat(f, 'e', -1, 64)
	mant, exp, _ := strings.Cut(s, "e")
	if !strings.Contains(mant, ".") {
		mant += ".0"
	}
	e, _ := strconv.Atoi(exp)
	return mant + "E" + strconv.Itoa(e)
}

// renderValue encodes a stored value as the server writes it in JSON.
func renderValue(v any) []byte {
	switch x := v.(type) {
	case int64:
		return []byte(strconv.FormatInt(x, 10))
	case float64:
		return []byte(javaDouble(x))
	case bool:
		return []byte(strconv.FormatBool(x))
	case string:
		return jsonString(x)
	case json.RawMessage:
		return []byte(x)
	}
	b, _ := json.Marshal(v)
	return b
}

// jsonString encodes s as a JSON string without HTML escaping (as Gson's
// JsonElement.toString does).
func jsonString(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimRight(b.Bytes(), "\n")
}

// objWriter builds a JSON object with members in insertion order.
type objWriter struct {
	b bytes.Buffer
	n int
}

func (o *objWriter) raw(key string, val []byte) *objWriter {
	if o.n == 0 {
		o.b.WriteByte('{')
	} else {
		o.b.WriteByte(',')
	}
	o.n++
	o.b.Write(jsonString(key))
	o.b.WriteByte(':')
	o.b.Write(val)
	return o
}

func (o *objWriter) value(key string, v any) *objWriter { return o.raw(key, renderValue(v)) }

func (o *objWriter) bytes() []byte {
	if o.n == 0 {
		return []byte("{}")
	}
	return append(append([]byte(nil), o.b.Bytes()...), '}')
}

// value is a stored telemetry value without an interface box: the storing
// path allocates nothing for numbers and booleans.
type value struct {
	kind valueKind
	num  uint64 // long (two's complement), double bits, bool 0/1
	str  string // string, or compact JSON text
}

type valueKind uint8

const (
	vLong valueKind = iota
	vDouble
	vBool
	vString
	vJSON
)

func longValue(n int64) value     { return value{kind: vLong, num: uint64(n)} }
func doubleValue(f float64) value { return value{kind: vDouble, num: math.Float64bits(f)} }

func boolValue(b bool) value {
	if b {
		return value{kind: vBool, num: 1}
	}
	return value{kind: vBool}
}

// valueOf converts a typed value (typeJSON's result) for storage.
func valueOf(v any) value {
	switch x := v.(type) {
	case int64:
		return longValue(x)
	case float64:
		return doubleValue(x)
	case bool:
		return boolValue(x)
	case string:
		return value{kind: vString, str: x}
	case json.RawMessage:
		return value{kind: vJSON, str: string(x)}
	}
	b, _ := json.Marshal(v)
	return value{kind: vJSON, str: string(b)}
}

// any is the value as Point.Value holds it.
func (v value) any() any {
	switch v.kind {
	case vLong:
		return int64(v.num)
	case vDouble:
		return math.Float64frombits(v.num)
	case vBool:
		return v.num != 0
	case vString:
		return v.str
	}
	return json.RawMessage(v.str)
}

func (p stored) point() Point { return Point{TS: p.ts, Value: p.v.any()} }
