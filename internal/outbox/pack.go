package outbox

import "time"

// Token completes when a publish was written (an mqtt.Token is one).
type Token interface {
	Done() <-chan struct{}
	Error() error
}

// Message is one MQTT publish built from records.
type Message struct {
	Topic   string
	Payload []byte
	Records []*Record
	Points  int
	// Devices is the number of devices a merged message carries data for:
	// ThingsBoard counts each as a telemetry message of its own.
	Devices int

	// Bookkeeping of the sender.
	SentAt  time.Time // when it was handed to the connection
	Token   Token     // QoS 0 only: completes when written
	sendSeq uint64
}

// Overhead is the MQTT remaining length of a PUBLISH on topic besides its
// payload: the topic's length prefix and bytes, and the packet id at QoS 1.
// ThingsBoard compares the remaining length with its maximum payload size.
func Overhead(topic string, qos byte) int {
	n := 2 + len(topic)
	if qos > 0 {
		n += 2
	}
	return n
}

// Pack builds one message from the head of recs and returns it with the
// number of records it took. A Raw record is a message of its own. With
// merge, a run of records of the same mergeable kind is packed into one
// message while its remaining length stays within limit and its data
// points within maxPoints (0: no limit), records of one
// device grouped under one key in their order; the size is counted on the
// encoded bytes, not estimated. The head record is always taken, even if
// it alone is over the limit (the caller checks Size).
func Pack(recs []*Record, limit, maxPoints int, qos byte, merge bool) (Message, int) {
	var p Packer
	return p.Pack(recs, limit, maxPoints, qos, merge)
}

// Packer is Pack with its bookkeeping kept from one message to the next,
// so that a stream of messages allocates only their payloads and record
// lists. It is for one goroutine.
type Packer struct {
	// The last Plan: its records, how many it took, their points, and
	// the message's remaining length and its part besides the payload.
	recs                      []*Record
	n, points, size, overhead int
	// groups are the devices of the message in first-appearance order, and
	// next chains each record to the next one of its device (-1: none).
	groups []group
	next   []int32
	index  map[string]int32 // device to group, for messages of many devices
	// MaxDevices, if positive, bounds the devices of one merged message
	// (a rate limit counts each device's part as a message).
	MaxDevices int
}

type group struct {
	name        string
	first, last int32
}

// find returns the group of device dev, or -1.
func (p *Packer) find(dev string) int32 {
	if len(p.groups) > 16 {
		if i, ok := p.index[dev]; ok {
			return i
		}
		return -1
	}
	for i := range p.groups {
		if p.groups[i].name == dev {
			return int32(i)
		}
	}
	return -1
}

// Pack is the function Pack: Plan, then Build.
func (p *Packer) Pack(recs []*Record, limit, maxPoints int, qos byte, merge bool) (Message, int) {
	n := p.Plan(recs, limit, maxPoints, qos, merge)
	return p.Build(), n
}

// Plan chooses the records of the next message from the head of recs, as
// Pack does, and returns how many; Build makes the message. A sender that
// waits for more data (a linger) decides on the count alone, without
// building a payload it would throw away.
func (p *Packer) Plan(recs []*Record, limit, maxPoints int, qos byte, merge bool) int {
	head := recs[0]
	p.recs, p.n, p.points = recs, 1, head.Points
	p.groups, p.next = p.groups[:0], p.next[:0]
	if head.Kind == Raw {
		return 1
	}
	p.overhead = Overhead(head.TopicOf(), qos)
	p.size = p.overhead + 2 // braces
	n, points := 0, 0
	for _, r := range recs {
		if r.Kind != head.Kind || (n > 0 && (!merge || r.Isolate || head.Isolate)) {
			break
		}
		gi := p.find(r.Device)
		add := 1 + len(r.Body)
		if gi < 0 {
			add = len(r.Device) + 3 + len(r.Body) // "name":[body]
			if len(p.groups) > 0 {
				add++
			}
		}
		if n > 0 && (p.size+add > limit || (maxPoints > 0 && points+r.Points > maxPoints) ||
			(gi < 0 && p.MaxDevices > 0 && len(p.groups) >= p.MaxDevices)) {
			break
		}
		p.size += add
		p.next = append(p.next, -1)
		if gi >= 0 {
			g := &p.groups[gi]
			p.next[g.last], g.last = int32(n), int32(n)
		} else {
			p.groups = append(p.groups, group{name: r.Device, first: int32(n), last: int32(n)})
			p.indexLast()
		}
		points += r.Points
		n++
	}
	p.n, p.points = n, points
	return n
}

// Build makes the message Plan chose.
func (p *Packer) Build() Message {
	recs, n := p.recs, p.n
	p.recs = nil
	head := recs[0]
	if head.Kind == Raw {
		return Message{Topic: head.Topic, Payload: head.Body, Records: []*Record{head}, Points: head.Points}
	}
	topic := head.TopicOf()
	open, close := byte('['), byte(']')
	if head.Kind == Attributes {
		open, close = '{', '}'
	}
	payload := make([]byte, 0, p.size-p.overhead)
	payload = append(payload, '{')
	for i, g := range p.groups {
		if i > 0 {
			payload = append(payload, ',')
		}
		payload = append(payload, g.name...)
		payload = append(payload, ':', open)
		for j := g.first; ; {
			payload = append(payload, recs[j].Body...)
			if j = p.next[j]; j < 0 {
				break
			}
			payload = append(payload, ',')
		}
		payload = append(payload, close)
	}
	payload = append(payload, '}')
	devices := len(p.groups)
	clear(p.groups) // hold no device names until the next message
	// Copy: recs aliases the queue, which clears the slots it gives up.
	return Message{Topic: topic, Payload: payload, Records: append([]*Record(nil), recs[:n]...), Points: p.points, Devices: devices}
}

// indexLast adds the group just appended to the index once there are too
// many groups to search one by one.
func (p *Packer) indexLast() {
	switch n := len(p.groups); {
	case n < 17:
	case n == 17:
		if p.index == nil {
			p.index = make(map[string]int32, 64)
		}
		clear(p.index)
		for i, g := range p.groups {
			p.index[g.name] = int32(i)
		}
	default:
		p.index[p.groups[n-1].name] = int32(n - 1)
	}
}

// Size is the message's remaining length.
func (m *Message) Size(qos byte) int { return Overhead(m.Topic, qos) + len(m.Payload) }
