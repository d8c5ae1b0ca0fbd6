package tbtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
)

// Helpers that read JSON the way the server's Gson-based code does:
// getAsString / getAsInt / getAsLong / getAsBoolean semantics, and objects
// with members in document order (a repeated key keeps its first position
// and its last value, as Gson's JsonObject does).

var (
	errNotObject = errors.New("not a JSON object")
	errWrongType = errors.New("wrong JSON type")
)

type member struct {
	key string
	val json.RawMessage
}

// jsonKind returns the first significant byte of raw ('n' for empty: Gson
// parses an empty payload as JSON null).
func jsonKind(raw []byte) byte {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 'n'
	}
	return raw[0]
}

// members parses raw (valid JSON) as an object.
func members(raw []byte) ([]member, error) {
	if jsonKind(raw) != '{' {
		return nil, errNotObject
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	var out []member
	index := map[string]int{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		if i, ok := index[key]; ok {
			out[i].val = v
			continue
		}
		index[key] = len(out)
		out = append(out, member{key: key, val: v})
	}
	if _, err := dec.Token(); err != nil && err != io.EOF {
		return nil, err
	}
	return out, nil
}

// object is a parsed JSON object with lookup by name.
type object struct {
	list []member
	m    map[string]json.RawMessage
}

func parseObject(raw []byte) (*object, error) {
	list, err := members(raw)
	if err != nil {
		return nil, err
	}
	o := &object{list: list, m: make(map[string]json.RawMessage, len(list))}
	for _, mb := range list {
		o.m[mb.key] = mb.val
	}
	return o, nil
}

// has is JsonObject.has: true even when the member is JSON null.
func (o *object) has(key string) bool { _, ok := o.m[key]; return ok }

func (o *object) get(key string) (json.RawMessage, bool) { v, ok := o.m[key]; return v, ok }

// required reads the member key of o with as. If it is missing or
// as refuses it, required returns why, as the server words its close reason:
// "<what> without <key>" or "<what> <key> is not <kind>".
func required[T any](o *object, what, key, kind string, as func([]byte) (T, error)) (T, string) {
	var zero T
	raw, ok := o.get(key)
	if !ok {
		return zero, what + " without " + key
	}
	v, err := as(raw)
	if err != nil {
		return zero, what + " " + key + " is not " + kind
	}
	return v, ""
}

// anyJSON is the as of a member that may hold any JSON.
func anyJSON(raw []byte) (json.RawMessage, error) { return raw, nil }

// elements parses raw (valid JSON) as an array.
func elements(raw []byte) ([]json.RawMessage, error) {
	if jsonKind(raw) != '[' {
		return nil, errWrongType
	}
	var out []json.RawMessage
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// single returns the only element of a one-element array (Gson's JsonArray
// getAsX delegates to it), or raw itself.
func single(raw []byte) ([]byte, error) {
	if jsonKind(raw) != '[' {
		return raw, nil
	}
	els, err := elements(raw)
	if err != nil || len(els) != 1 {
		return nil, errWrongType
	}
	return els[0], nil
}

// asString is JsonElement.getAsString: strings as is, numbers and booleans as
// their text; null and objects fail.
func asString(raw []byte) (string, error) {
	raw, err := single(raw)
	if err != nil {
		return "", err
	}
	raw = bytes.TrimSpace(raw)
	switch jsonKind(raw) {
	case '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	case 't', 'f', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return string(raw), nil
	}
	return "", errWrongType
}

// asLong is JsonElement.getAsLong: a JSON number is truncated to a long, a
// string must be a plain long literal.
func asLong(raw []byte) (int64, error) {
	raw, err := single(raw)
	if err != nil {
		return 0, err
	}
	raw = bytes.TrimSpace(raw)
	switch jsonKind(raw) {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
		return strconv.ParseInt(s, 10, 64)
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		text := string(raw)
		if n, err := strconv.ParseInt(text, 10, 64); err == nil {
			return n, nil
		}
		f, err := strconv.ParseFloat(text, 64)
		if err != nil || math.IsInf(f, 0) {
			return 0, errWrongType
		}
		return int64(f), nil
	}
	return 0, errWrongType
}

// asInt is JsonElement.getAsInt (long truncated to 32 bits like Java's intValue).
func asInt(raw []byte) (int, error) {
	n, err := asLong(raw)
	if err != nil {
		return 0, err
	}
	if kind := jsonKind(raw); kind == '"' && (n > math.MaxInt32 || n < math.MinInt32) {
		return 0, errWrongType // Integer.parseInt
	}
	return int(int32(n)), nil
}

// asBool is JsonElement.getAsBoolean: a boolean, or Boolean.parseBoolean of
// the text of a string or number.
func asBool(raw []byte) (bool, error) {
	raw, err := single(raw)
	if err != nil {
		return false, err
	}
	raw = bytes.TrimSpace(raw)
	switch jsonKind(raw) {
	case 't':
		return true, nil
	case 'f':
		return false, nil
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return false, err
		}
		return strings.EqualFold(s, "true"), nil
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return false, nil
	}
	return false, errWrongType
}

// compactJSON returns raw compacted, or raw unchanged if it is not JSON.
func compactJSON(raw []byte) json.RawMessage {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return append(json.RawMessage(nil), raw...)
	}
	return json.RawMessage(b.Bytes())
}
