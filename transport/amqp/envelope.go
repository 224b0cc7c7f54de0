package amqp

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// A task message is the task id as its message id (the one property
// besides persistence) and a body that starts with one line of the fields
// docket needs (see envelope), followed by the payload. The fields travel
// in the body because RabbitMQ decodes the header table and the string
// properties of every message it routes: ten small headers cost it about
// a third of its publish rate here, the task name and reply queue as
// properties about a tenth, the same bytes in the body next to nothing.
// Only the previous attempt's error, free-form text, keeps a header.
const (
	hLastErr = "docket-last-error"  // the previous attempt's error; absent when none
	hReason  = "docket-dead-reason" // on dead-lettered copies
)

// envelopeTag opens the first line of a task message's body; the 1 is the
// format's version.
const envelopeTag = "docket/1"

// envelopeFields is the number of integer fields on the first line.
const envelopeFields = 8

// noReply stands for "no reply queue" on the first line.
const noReply = "-"

// envelope returns the body of m's message: the line
//
//	docket/1 NAME REPLY_TO PRIORITY MAX_ATTEMPTS ATTEMPTS CREATED ETA EXPIRES TIMEOUT RESULT_TTL QUEUE [META]
//
// with the producer's reply queue (- for none), the attempts used before
// this copy, times in Unix ms and durations in ms (0 when none), and meta
// (wire.EncodeMeta: headers, backoff and IgnoreResult as JSON) when set;
// then a newline and the payload, byte for byte. Names, queues and reply
// queues never contain spaces or newlines, and JSON from encoding/json
// never contains a raw newline.
func envelope(m *transport.Message, attempts int, replyTo, meta string) []byte {
	if replyTo == "" {
		replyTo = noReply
	}
	b := make([]byte, 0, 128+len(m.Name)+len(replyTo)+len(m.Queue)+len(meta)+len(m.Payload))
	b = append(b, envelopeTag...)
	b = append(append(b, ' '), m.Name...)
	b = append(append(b, ' '), replyTo...)
	for _, v := range [envelopeFields]int64{
		int64(m.Priority), int64(m.MaxAttempts), int64(attempts), wire.Millis(m.Created), wire.Millis(m.ETA),
		wire.Millis(m.Expires), m.Timeout.Milliseconds(), m.ResultTTL.Milliseconds(),
	} {
		b = append(b, ' ')
		b = strconv.AppendInt(b, v, 10)
	}
	b = append(append(b, ' '), m.Queue...)
	if meta != "" {
		b = append(append(b, ' '), meta...)
	}
	b = append(b, '\n')
	return append(b, m.Payload...)
}

// openEnvelope fills m's name, fields and payload from a task message's
// body and returns the attempts used before this copy and the reply queue.
// The payload shares body's bytes.
func openEnvelope(body []byte, m *transport.Message) (attempts int, replyTo string, err error) {
	line, payload, ok := bytes.Cut(body, []byte{'\n'})
	if !ok || !bytes.HasPrefix(line, []byte(envelopeTag+" ")) {
		return 0, "", fmt.Errorf("the body does not start with a %s line (not a docket task)", envelopeTag)
	}
	rest := string(line[len(envelopeTag)+1:])
	var words [2]string // the name and the reply queue
	for i := range words {
		var ok bool
		if words[i], rest, ok = strings.Cut(rest, " "); !ok || words[i] == "" {
			return 0, "", fmt.Errorf("the %s line ends early", envelopeTag)
		}
	}
	var n [envelopeFields]int64
	for i := range n {
		field, after, ok := strings.Cut(rest, " ")
		if !ok {
			return 0, "", fmt.Errorf("the %s line ends early", envelopeTag)
		}
		x, err := strconv.ParseInt(field, 10, 64)
		if err != nil {
			return 0, "", fmt.Errorf("the %s line: field %d: %w", envelopeTag, i+3, err)
		}
		n[i], rest = x, after
	}
	if n[0] != int64(int(n[0])) || n[1] != int64(int(n[1])) || n[2] < 0 || n[2] != int64(int(n[2])) {
		return 0, "", fmt.Errorf("the %s line: a field is out of range", envelopeTag)
	}
	m.Name = words[0]
	m.Priority, m.MaxAttempts = int(n[0]), int(n[1])
	m.Created, m.ETA, m.Expires = wire.FromMillis(n[3]), wire.FromMillis(n[4]), wire.FromMillis(n[5])
	m.Timeout, m.ResultTTL = millis(n[6]), millis(n[7])
	var meta string
	m.Queue, meta, _ = strings.Cut(rest, " ")
	if err := wire.DecodeMeta(meta, m); err != nil {
		return 0, "", err
	}
	m.Payload = payload
	if replyTo = words[1]; replyTo == noReply {
		replyTo = ""
	}
	return int(n[2]), replyTo, nil
}

// millis returns ms as a duration, 0 for values a duration cannot hold.
func millis(ms int64) time.Duration {
	if ms <= 0 || ms > math.MaxInt64/int64(time.Millisecond) {
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

// encode builds the publishing of m, with attempts already used and the
// last error carried over from earlier copies.
func encode(m *transport.Message, attempts int, lastErr, replyTo string) (amqp.Publishing, error) {
	meta, err := wire.EncodeMeta(m)
	if err != nil {
		return amqp.Publishing{}, err
	}
	var h amqp.Table
	if lastErr != "" {
		h = amqp.Table{hLastErr: lastErr}
	}
	prio := m.Priority
	if prio < 0 {
		prio = 0
	}
	return amqp.Publishing{
		Headers: h, DeliveryMode: amqp.Persistent, Priority: uint8(min(prio, 9)),
		MessageId: m.ID, Body: envelope(m, attempts, replyTo, meta),
	}, nil
}

func hInt(h amqp.Table, k string) int64 {
	switch v := h[k].(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	case int16:
		return int64(v)
	case int8:
		return int64(v)
	case int:
		return int64(v)
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	}
	return 0
}

func hStr(h amqp.Table, k string) string {
	switch v := h[k].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// decoded is a delivered task message, read.
type decoded struct {
	msg     transport.Message
	used    int    // attempts used before this copy was published
	lastErr string // the previous attempt's error
	replyTo string // the producer's reply queue, if any
}

// decode reads a delivered task message.
func decode(d *amqp.Delivery) (decoded, error) {
	out := decoded{msg: transport.Message{ID: d.MessageId}}
	m := &out.msg
	if m.ID == "" {
		return out, errors.New("message has no message-id (not a docket task)")
	}
	var err error
	out.used, out.replyTo, err = openEnvelope(d.Body, m)
	switch {
	case err != nil:
		return out, err
	case m.Queue == "":
		return out, errors.New("message names no queue")
	case m.MaxAttempts < 1:
		return out, fmt.Errorf("message has max attempts %d", m.MaxAttempts)
	}
	out.lastErr = hStr(d.Headers, hLastErr)
	return out, nil
}

// deliveries returns how often the broker delivered this copy before: the
// quorum queue's count, or 1 for a classic queue's redelivery.
func deliveries(d *amqp.Delivery) int {
	if n := hInt(d.Headers, "x-delivery-count"); n > 0 {
		return int(n)
	}
	if d.Redelivered {
		return 1
	}
	return 0
}
