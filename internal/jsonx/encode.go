// Package jsonx is the JSON codec behind every payload tbgateway sends and
// receives. It exists because encoding/json cannot keep ThingsBoard's value
// types apart: the server stores an integral number written without a dot as
// a long and one written with a dot as a double, so 3.0 must leave as "3.0",
// never "3". The encoder appends into caller-owned buffers so that building a
// message costs no allocation per data point once the buffers are warm.
package jsonx

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Errors returned by the encoder. The root package maps them onto its public
// sentinels.
var (
	ErrNonFinite   = errors.New("NaN or infinite number")
	ErrUnsupported = errors.New("unsupported value type")
	ErrInvalidJSON = errors.New("invalid JSON")
	ErrNil         = errors.New("nil value")
)

const hex = "0123456789abcdef"

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// encoding/json does, so the output is always valid JSON.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript consumers
		// (the ThingsBoard UI); escape them as encoding/json does.
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// MaxScale is the largest decimal scale (digits after the point minus the
// exponent) at which ThingsBoard's JsonConverter still stores a non-integral
// number as a double; beyond it the number is stored as a string (WIRE.md
// §2.4, §10.2).
const MaxScale = 16

// AppendFloat appends f (bits is 32 or 64, the size of the float the value
// came from) so that ThingsBoard stores it as a double:
//
//   - An integral value keeps a decimal point and never takes an exponent
//     ("3.0", "1000000000000000000000.0"; written "3" or "1e21" it would
//     be stored as a long). Its scale is 1 and it parses back to exactly f,
//     however large (1e300 and MaxFloat64 are written in full).
//   - Otherwise, when the shortest form that parses back to exactly f (as a
//     float of the given bits) has a scale of at most 16, that form is
//     written and nothing is lost. This is always the case for |f| ≥ 0.5
//     (float64) and |f| ≥ 2⁻³⁰ ≈ 9.3e-10 (float32), where the spacing of
//     the floats exceeds 10⁻¹⁶.
//   - Otherwise (0.1+0.2 = 0.30000000000000004, scale 17; 1.5e-17, scale 18)
//     f is rounded to 16 decimal places, the result is read back as a float
//     of the given bits, r, exactly as the server does, and the shortest
//     form of r is written: its scale is at most 16, it parses back to
//     exactly r, and the server stores r. The cost: r differs from f by at
//     most 10⁻¹⁶ (one unit in the 16th decimal place), and at most
//     0.5×10⁻¹⁶ plus half a unit in the last place of r, i.e. less than
//     8×10⁻¹⁷ for float64; r is the float nearest to f rounded to 16
//     decimals. 0.1+0.2 is written "0.3". (For bits 32, r is a float32 and,
//     as for every float32, the server stores the double nearest to the
//     text.)
//   - Magnitudes below 10⁻¹⁶ cannot keep a significant digit at scale 16
//     and follow the same rule rather than an error: |f| < 0.5×10⁻¹⁶
//     (1e-17, 5e-324, …) is written as zero with f's sign ("0.0", "-0.0";
//     the server stores 0.0), and 0.5×10⁻¹⁶ ≤ |f| < 10⁻¹⁶ as "1e-16".
//
// The output is canonical: re-encoding the value the server stores writes
// the same bytes. NaN and infinities are refused with ErrNonFinite and
// nothing is appended. AppendFloat allocates nothing beyond growing dst.
func AppendFloat(dst []byte, f float64, bits int) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return dst, ErrNonFinite
	}
	if f == math.Trunc(f) {
		return appendIntegral(dst, f, bits), nil
	}
	if b, ok := appendShortFloat(dst, f, bits); ok {
		return b, nil
	}
	n := len(dst)
	dst = appendShortest(dst, f, bits)
	if math.Abs(f) >= 1 {
		// At most 17 significant digits (9 for float32) with at least one
		// before the point: the scale is at most 16.
		return dst, nil
	}
	scale, exp := decimalScale(dst[n:])
	if scale <= MaxScale {
		return dst, nil
	}
	r := roundScale(f, bits, exp)
	// r's shortest form has a scale of at most 16: the decimal r was read
	// from is one with scale ≤ 16 that parses to r, and the shortest form
	// (strconv finds the coarsest power of ten with a multiple in r's
	// rounding interval) has a scale no greater than any such decimal's.
	if r == math.Trunc(r) {
		return appendIntegral(dst[:n], r, bits), nil
	}
	if b, ok := appendShortFloat(dst[:n], r, bits); ok {
		return b, nil
	}
	return appendShortest(dst[:n], r, bits), nil
}

// appendIntegral writes an integral f as plain digits and ".0", never with
// an exponent, because the server treats any exponent form of an integral
// number as a long.
func appendIntegral(dst []byte, f float64, bits int) []byte {
	dst = strconv.AppendFloat(dst, f, 'f', -1, bits)
	return append(dst, '.', '0')
}

// appendShortest writes the shortest form of a non-integral f that parses
// back to f, with an exponent below 1e-6.
func appendShortest(dst []byte, f float64, bits int) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs < 1e-6 || abs >= 1e21 {
		format = 'e'
	}
	return strconv.AppendFloat(dst, f, format, -1, bits)
}

// decimalScale returns the BigDecimal scale of a number strconv wrote
// (digits after the point, minus the exponent, trailing zeros of the
// fraction ignored) and the decimal exponent of its first significant digit
// (-1 for 0.3, -17 for 1.5e-17). b holds a non-zero number.
func decimalScale(b []byte) (scale, exp int) {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	intStart := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	intEnd := i
	fracStart, fracEnd := i, i
	if i < len(b) && b[i] == '.' {
		i++
		fracStart = i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		fracEnd = i
	}
	e := 0
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		neg := false
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			neg = b[i] == '-'
			i++
		}
		for ; i < len(b); i++ {
			e = e*10 + int(b[i]-'0')
		}
		if neg {
			e = -e
		}
	}
	for fracEnd > fracStart && b[fracEnd-1] == '0' {
		fracEnd--
	}
	scale = fracEnd - fracStart - e
	exp = e - 1 // f==0 cannot happen; keeps the result defined
	for j := intStart; j < intEnd; j++ {
		if b[j] != '0' {
			return scale, e + intEnd - j - 1
		}
	}
	for j := fracStart; j < fracEnd; j++ {
		if b[j] != '0' {
			return scale, e - (j - fracStart) - 1
		}
	}
	return scale, exp
}

// roundScale returns f rounded to MaxScale decimal places and read back as a
// float of the given bits. exp is the decimal exponent of f's shortest form,
// which needs more than MaxScale decimals (f is below 1 in magnitude).
func roundScale(f float64, bits int, exp int) float64 {
	var scratch [32]byte // on the stack: at most 23 bytes are written
	buf := scratch[:0]
	switch {
	case exp < -MaxScale-1:
		// |f| < 10⁻¹⁷: nearer to zero than to 10⁻¹⁶.
		return math.Copysign(0, f)
	case exp == -MaxScale-1:
		// 10⁻¹⁷ ≤ |f| < 10⁻¹⁶: rounds to 0 or 10⁻¹⁶; strconv's fixed
		// notation rounds the exact binary value.
		buf = strconv.AppendFloat(buf, f, 'f', MaxScale, bits)
	default:
		// The shortest form needs more decimals than MaxScale, so no power
		// of ten lies between it and f: its exponent is f's, and MaxScale+exp
		// digits after the first one end at the 16th decimal place. (A
		// rounding carry, 9.99…→10.0…, only adds a trailing zero.) Unlike
		// 'f', 'e' with at most 18 digits takes strconv's fast fixed path.
		buf = strconv.AppendFloat(buf, f, 'e', MaxScale+exp, bits)
	}
	r, err := strconv.ParseFloat(string(buf), bits)
	if err != nil {
		// Cannot happen: strconv wrote a finite number within range.
		return f
	}
	return r
}

// appendShortFloat is the fast path for the usual measurement: a value
// with at most six decimals and a moderate magnitude. n/1e6 computed in
// float64 is the correctly rounded value of the decimal n×10⁻⁶, exactly
// what a parser makes of the digits written here, so the check below
// guarantees the text parses back to f. Trailing zeros are dropped, which
// gives the same digits as the shortest representation.
func appendShortFloat(dst []byte, f float64, bits int) ([]byte, bool) {
	const scale = 1e6
	if bits != 64 || !(f > -1e9 && f < 1e9) {
		return dst, false
	}
	// Any integer nearest to f×10⁶ will do; RoundToEven is one instruction
	// where Round is a dozen.
	n := int64(math.RoundToEven(f * scale))
	if float64(n)/scale != f {
		return dst, false
	}
	if n < 0 {
		dst = append(dst, '-')
		n = -n
	}
	ip, frac := uint64(n)/1_000_000, uint64(n)%1_000_000
	decimals := 6
	for decimals > 2 && frac%100 == 0 {
		frac /= 100
		decimals -= 2
	}
	if decimals > 1 && frac%10 == 0 {
		frac /= 10
		decimals--
	}
	size := 1 + decimals // point and decimals
	for v := ip; ; v /= 10 {
		size++
		if v < 10 {
			break
		}
	}
	// Written backwards in place, two digits at a time.
	dst = slices.Grow(dst, size)
	b := dst[len(dst) : len(dst)+size]
	i := size
	for ; decimals >= 2; decimals -= 2 {
		i -= 2
		copy(b[i:], digitPairs[frac%100*2:][:2])
		frac /= 100
	}
	if decimals == 1 {
		i--
		b[i] = byte('0' + frac)
	}
	i--
	b[i] = '.'
	for ip >= 100 {
		i -= 2
		copy(b[i:], digitPairs[ip%100*2:][:2])
		ip /= 100
	}
	if ip >= 10 {
		copy(b, digitPairs[ip*2:][:2])
	} else {
		b[0] = byte('0' + ip)
	}
	return dst[:len(dst)+size], true
}

const digitPairs = "00010203040506070809" +
	"10111213141516171819" +
	"20212223242526272829" +
	"30313233343536373839" +
	"40414243444546474849" +
	"50515253545556575859" +
	"60616263646566676869" +
	"70717273747576777879" +
	"80818283848586878889" +
	"90919293949596979899"

// Scratch holds reusable buffers for sorting object keys.
type Scratch struct {
	keys [][]string
	used int
}

func (s *Scratch) take() []string {
	if s.used == len(s.keys) {
		s.keys = append(s.keys, make([]string, 0, 16))
	}
	k := s.keys[s.used][:0]
	s.used++
	return k
}

func (s *Scratch) give(k []string) {
	s.used--
	clear(k)
	s.keys[s.used] = k[:0]
}

// SortedKeys returns the keys of m in order, in a slice borrowed from s that
// must be returned with Release.
func (s *Scratch) SortedKeys(m map[string]any) []string {
	k := s.take()
	for key := range m {
		k = append(k, key)
	}
	slices.Sort(k)
	return k
}

// Release gives back a slice obtained from SortedKeys.
func (s *Scratch) Release(k []string) { s.give(k) }

// AppendObject appends m as a JSON object with its keys in sorted order, so
// that the same values always produce the same bytes.
func AppendObject(dst []byte, m map[string]any, s *Scratch) ([]byte, error) {
	keys := s.SortedKeys(m)
	defer s.Release(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendString(dst, k)
		dst = append(dst, ':')
		var err error
		if dst, err = appendNested(dst, m[k], s); err != nil {
			return dst, &KeyError{Key: k, Err: err}
		}
	}
	return append(dst, '}'), nil
}

// KeyError names the key whose value could not be encoded.
type KeyError struct {
	Key string
	Err error
}

// Error implements error.
func (e *KeyError) Error() string { return strconv.Quote(e.Key) + ": " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *KeyError) Unwrap() error { return e.Err }

// AppendValue appends one value. Supported: bool, string, every integer and
// float type, json.Number, json.RawMessage, map[string]any and []any (nested
// with the same rules), and any other struct, map, slice or array through
// encoding/json. Channels, functions, complex numbers and nil are refused:
// ThingsBoard would drop a null silently, so refusing it loses nothing
// unseen.
func AppendValue(dst []byte, v any, s *Scratch) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return AppendString(dst, x), nil
	case bool:
		return strconv.AppendBool(dst, x), nil
	case int:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(dst, x, 10), nil
	case int32:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int16:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int8:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case uint:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint64:
		return strconv.AppendUint(dst, x, 10), nil
	case uint32:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint16:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint8:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case float64:
		return AppendFloat(dst, x, 64)
	case float32:
		return AppendFloat(dst, float64(x), 32)
	case json.Number:
		if !validNumber(string(x)) {
			return dst, ErrInvalidJSON
		}
		return append(dst, x...), nil
	case json.RawMessage:
		return appendRaw(dst, x)
	case map[string]any:
		if x == nil {
			return dst, ErrNil
		}
		return AppendObject(dst, x, s)
	case []any:
		if x == nil {
			return dst, ErrNil
		}
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendNested(dst, e, s); err != nil {
				return dst, err
			}
		}
		return append(dst, ']'), nil
	case nil:
		return dst, ErrNil
	}
	return appendReflect(dst, v)
}

// appendNested encodes an element inside a JSON array or object value, where
// null is a legitimate part of the document.
func appendNested(dst []byte, v any, s *Scratch) ([]byte, error) {
	if v == nil {
		return append(dst, "null"...), nil
	}
	if m, ok := v.(map[string]any); ok && m == nil {
		return append(dst, "null"...), nil
	}
	return AppendValue(dst, v, s)
}

func appendRaw(dst []byte, raw []byte) ([]byte, error) {
	if !json.Valid(raw) {
		return dst, ErrInvalidJSON
	}
	n := len(dst)
	dst = append(dst, raw...)
	// Keep the message compact and single-line whatever the caller handed in.
	if hasSpace(raw) {
		c, err := compact(dst[:n], raw)
		if err != nil {
			return dst[:n], ErrInvalidJSON
		}
		return c, nil
	}
	if string(raw) == "null" {
		return dst[:n], ErrNil
	}
	return dst, nil
}

func hasSpace(b []byte) bool {
	for _, c := range b {
		if c == ' ' || c == '\n' || c == '\r' || c == '\t' {
			return true
		}
	}
	return false
}

func appendReflect(dst []byte, v any) ([]byte, error) {
	rv := reflect.ValueOf(v)
	if _, ok := v.(json.Marshaler); !ok {
		k := rv.Kind()
		for k == reflect.Pointer {
			if rv.IsNil() {
				return dst, ErrNil
			}
			rv = rv.Elem()
			k = rv.Kind()
		}
		switch k {
		case reflect.Struct, reflect.Map, reflect.Slice, reflect.Array:
		case reflect.Bool, reflect.String, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
			// Named scalar types (type Celsius float64) go through the
			// fast path so that floats keep their decimal point.
			return appendScalar(dst, rv)
		default:
			return dst, ErrUnsupported
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		var ue *json.UnsupportedValueError
		if errors.As(err, &ue) && (ue.Str == "NaN" || ue.Str == "+Inf" || ue.Str == "-Inf") {
			return dst, ErrNonFinite
		}
		return dst, errors.Join(ErrUnsupported, err)
	}
	return appendRaw(dst, b)
}

func appendScalar(dst []byte, rv reflect.Value) ([]byte, error) {
	switch rv.Kind() {
	case reflect.Bool:
		return strconv.AppendBool(dst, rv.Bool()), nil
	case reflect.String:
		return AppendString(dst, rv.String()), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(dst, rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.AppendUint(dst, rv.Uint(), 10), nil
	case reflect.Float32:
		return AppendFloat(dst, rv.Float(), 32)
	default:
		return AppendFloat(dst, rv.Float(), 64)
	}
}

// validNumber reports whether s is a JSON number literal.
func validNumber(s string) bool {
	if s == "" {
		return false
	}
	i := 0
	if s[i] == '-' {
		i++
	}
	if i == len(s) {
		return false
	}
	switch {
	case s[i] == '0':
		i++
	case s[i] >= '1' && s[i] <= '9':
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if i == len(s) || s[i] < '0' || s[i] > '9' {
			return false
		}
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i == len(s) || s[i] < '0' || s[i] > '9' {
			return false
		}
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	}
	return i == len(s)
}
