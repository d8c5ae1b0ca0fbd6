package outbox

import (
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Message is one MQTT publish built from records.
type Message struct {
	Topic   string
	Payload []byte
	Records []*Record
	Points  int

	// Bookkeeping of the sender.
	Drops   int        // connection losses while this was the oldest message in flight
	SentAt  time.Time  // when it was handed to the connection
	Token   mqtt.Token // QoS 0 only: completes when written
	sendSeq uint64
	AckSeq  uint64 // order of its acknowledgement among all messages
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
	head := recs[0]
	if head.Kind == Raw {
		return Message{Topic: head.Topic, Payload: head.Body, Records: []*Record{head}, Points: head.Points}, 1
	}
	topic := head.TopicOf()
	size := Overhead(topic, qos) + 2 // braces
	open, close := byte('['), byte(']')
	if head.Kind == Attributes {
		open, close = '{', '}'
	}
	// Group by device in first-appearance order.
	type group struct {
		name    string
		members []*Record
	}
	var groups []group
	var index map[string]int // only for messages of many devices
	find := func(dev string) (int, bool) {
		if index != nil {
			i, ok := index[dev]
			return i, ok
		}
		for i := range groups {
			if groups[i].name == dev {
				return i, true
			}
		}
		return 0, false
	}
	n := 0
	points := 0
	for _, r := range recs {
		if r.Kind != head.Kind || (n > 0 && (!merge || r.Isolate || head.Isolate)) {
			break
		}
		var add int
		gi, seen := find(r.Device)
		if seen {
			add = 1 + len(r.Body)
		} else {
			add = len(r.Device) + 3 + len(r.Body) // "name":[body]
			if len(groups) > 0 {
				add++
			}
		}
		if n > 0 && (size+add > limit || (maxPoints > 0 && points+r.Points > maxPoints)) {
			break
		}
		size += add
		if seen {
			groups[gi].members = append(groups[gi].members, r)
		} else {
			groups = append(groups, group{name: r.Device, members: []*Record{r}})
			if index != nil {
				index[r.Device] = len(groups) - 1
			} else if len(groups) > 16 {
				index = make(map[string]int, 64)
				for i, g := range groups {
					index[g.name] = i
				}
			}
		}
		points += r.Points
		n++
	}
	payload := make([]byte, 0, size-Overhead(topic, qos))
	payload = append(payload, '{')
	for i, g := range groups {
		if i > 0 {
			payload = append(payload, ',')
		}
		payload = append(payload, g.name...)
		payload = append(payload, ':', open)
		for j, r := range g.members {
			if j > 0 {
				payload = append(payload, ',')
			}
			payload = append(payload, r.Body...)
		}
		payload = append(payload, close)
	}
	payload = append(payload, '}')
	// Copy: recs aliases the queue, which clears the slots it gives up.
	return Message{Topic: topic, Payload: payload, Records: append([]*Record(nil), recs[:n]...), Points: points}, n
}

// Size is the message's remaining length.
func (m *Message) Size(qos byte) int { return Overhead(m.Topic, qos) + len(m.Payload) }
