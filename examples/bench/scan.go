package main

import (
	"strconv"
)

// scanTelemetry walks a v1/gateway/telemetry payload,
// {"dev":[{"ts":N,"values":{..}},..],..}, calling visit for every entry with
// its device (raw JSON string contents), timestamp and number of values. It
// reports whether the payload was well formed.
func scanTelemetry(p []byte, visit func(dev []byte, ts int64, points int)) bool {
	s := scanner{b: p}
	ok := s.object(func(dev []byte) bool {
		return s.array(func() bool {
			ts, points := int64(-1), -1
			ok := s.object(func(key []byte) bool {
				switch string(key) {
				case "ts":
					var ok bool
					ts, ok = s.integer()
					return ok
				case "values":
					points = 0
					return s.object(func([]byte) bool { points++; return s.skip() })
				}
				return s.skip()
			})
			if ok {
				visit(dev, ts, points)
			}
			return ok
		})
	})
	s.space()
	return ok && s.i == len(s.b)
}

// scanner is a minimal JSON reader for scanTelemetry.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

// next consumes and returns the next non-space byte, 0 at the end.
func (s *scanner) next() byte {
	s.space()
	if s.i >= len(s.b) {
		return 0
	}
	s.i++
	return s.b[s.i-1]
}

func (s *scanner) peek() byte {
	s.space()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

func (s *scanner) str() ([]byte, bool) {
	if s.next() != '"' {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '\\':
			s.i += 2
		case '"':
			s.i++
			return s.b[start : s.i-1], true
		default:
			s.i++
		}
	}
	return nil, false
}

// object reads {"key":value,..}, member calling member for each key to
// read its value.
func (s *scanner) object(member func(key []byte) bool) bool {
	if s.next() != '{' {
		return false
	}
	if s.peek() == '}' {
		s.i++
		return true
	}
	for {
		k, ok := s.str()
		if !ok || s.next() != ':' || !member(k) {
			return false
		}
		switch s.next() {
		case ',':
		case '}':
			return true
		default:
			return false
		}
	}
}

func (s *scanner) array(elem func() bool) bool {
	if s.next() != '[' {
		return false
	}
	if s.peek() == ']' {
		s.i++
		return true
	}
	for {
		if !elem() {
			return false
		}
		switch s.next() {
		case ',':
		case ']':
			return true
		default:
			return false
		}
	}
}

func (s *scanner) integer() (int64, bool) {
	s.space()
	start := s.i
	for s.i < len(s.b) && (s.b[s.i] == '-' || s.b[s.i] >= '0' && s.b[s.i] <= '9') {
		s.i++
	}
	n, err := strconv.ParseInt(string(s.b[start:s.i]), 10, 64)
	return n, err == nil
}

// skip reads any value.
func (s *scanner) skip() bool {
	switch s.peek() {
	case '"':
		_, ok := s.str()
		return ok
	case '{':
		return s.object(func([]byte) bool { return s.skip() })
	case '[':
		return s.array(s.skip)
	case 0:
		return false
	}
	start := s.i // number or literal
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return s.i > start
		}
		s.i++
	}
	return s.i > start
}
