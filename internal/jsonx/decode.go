package jsonx

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
)

func compact(dst, src []byte) ([]byte, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, src); err != nil {
		return dst, err
	}
	return append(dst, b.Bytes()...), nil
}

// Decode parses one JSON document and keeps ThingsBoard's number types
// apart: a literal without '.' or exponent becomes int64 (float64 when it does
// not fit), any other number float64. Objects become map[string]any, arrays
// []any. Trailing data after the document is an error.
func Decode(data []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if len(bytes.TrimLeft(data[d.InputOffset():], " \t\r\n")) > 0 {
		return nil, errors.New("jsonx: trailing data after JSON value")
	}
	return Normalize(v), nil
}

// DecodeObject is Decode for a document that must be an object.
func DecodeObject(data []byte) (map[string]any, error) {
	v, err := Decode(data)
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("jsonx: not a JSON object")
	}
	return m, nil
}

// Normalize converts json.Number leaves (from a decoder with UseNumber) to
// int64 or float64 in place and returns the converted value.
func Normalize(v any) any {
	switch x := v.(type) {
	case json.Number:
		return Number(x)
	case map[string]any:
		for k, e := range x {
			x[k] = Normalize(e)
		}
	case []any:
		for i, e := range x {
			x[i] = Normalize(e)
		}
	}
	return v
}

// Number converts a JSON number literal to int64 when it is written as an
// integer and fits, else to float64. A literal beyond the range of float64
// stays a json.Number, so that nothing is lost and it encodes back as it
// came.
func Number(n json.Number) any {
	s := string(n)
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return i
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return n
	}
	return f
}
