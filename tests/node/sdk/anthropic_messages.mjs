// The @anthropic-ai/sdk package's Messages API against BASE_URL (echo models): plain,
// streamed, and a tool_use answered with a tool_result. Prints one JSON object a line.
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic({ baseURL: process.env.BASE_URL, apiKey: "unused",
                               maxRetries: 0, timeout: 30_000 });
const print = (result) => console.log(JSON.stringify(result));
const weather = { name: "get_weather", description: "Weather in a city",
  input_schema: { type: "object", properties: { city: { type: "string" } } } };

const plain = await client.messages.create({ model: "fast", max_tokens: 20, system: "be brief",
  messages: [{ role: "user", content: "hello from node ONCE" }] });
print({ case: "plain", content: plain.content, stop: plain.stop_reason, usage: plain.usage });

const deltas = [];
const stream = client.messages.stream({ model: "fast", max_tokens: 20,
  messages: [{ role: "user", content: "streamed from node ONCE" }] });
stream.on("text", (text) => deltas.push(text));
const streamed = await stream.finalMessage();
print({ case: "stream", deltas, content: streamed.content, stop: streamed.stop_reason });

const messages = [{ role: "user", content: "CALL it" }];
const called = await client.messages.create({ model: "fast", max_tokens: 50, messages,
                                              tools: [weather] });
print({ case: "tool_use", stop: called.stop_reason,
        uses: called.content.filter((b) => b.type === "tool_use")
          .map((b) => ({ id: b.id, name: b.name, input: b.input })) });
messages.push({ role: "assistant", content: called.content }, { role: "user", content:
  called.content.filter((b) => b.type === "tool_use")
    .map((b) => ({ type: "tool_result", tool_use_id: b.id, content: "sunny ONCE" })) });
const answered = await client.messages.create({ model: "fast", max_tokens: 50, messages,
                                                tools: [weather] });
print({ case: "tool_result", content: answered.content, stop: answered.stop_reason });
