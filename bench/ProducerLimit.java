// The publish limit: Kafka's own Java producer sending our real records, keys included.
//
// Kafka 4.1's ProducerPerformance sends without keys (one sticky partition per batch,
// which fills batches better than our `type:id` keys ever can) and has no warm-up
// option, so the first 100k records mostly measure the JVM warming up. This harness
// sends `warmup` records first (not timed), then times `count` records, cycling through
// `key<TAB>value` lines of the payload file (our encoded events; JSON holds no raw tab).
//
// Run as a single-file source program (JDK 11+): java -cp 'kafka/lib/*' ProducerLimit.java
// BOOTSTRAP TOPIC PAYLOAD_FILE WARMUP COUNT [prop=value | --config=PROPERTIES_FILE ...]
// (a file for the connection settings, so a SASL password never shows on a command line;
// not `@file`, which the java launcher itself expands into arguments)
// Prints one line: "records=<n> seconds=<s> records_per_s=<r>".

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class ProducerLimit {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        List<byte[][]> records = new ArrayList<>();
        for (String line : Files.readAllLines(Path.of(args[2]), StandardCharsets.UTF_8)) {
            int tab = line.indexOf('\t');
            records.add(new byte[][] {
                line.substring(0, tab).getBytes(StandardCharsets.UTF_8),
                line.substring(tab + 1).getBytes(StandardCharsets.UTF_8)});
        }
        long warmup = Long.parseLong(args[3]);
        long count = Long.parseLong(args[4]);
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        for (int i = 5; i < args.length; i++) {
            if (args[i].startsWith("--config=")) {
                String file = args[i].substring("--config=".length());
                try (var reader = Files.newBufferedReader(Path.of(file))) {
                    props.load(reader);
                }
                continue;
            }
            String[] kv = args[i].split("=", 2);
            props.put(kv[0], kv[1]);
        }
        AtomicReference<Exception> failed = new AtomicReference<>();
        try (KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
            send(producer, topic, records, 0, warmup, failed);
            producer.flush();
            long start = System.nanoTime();
            send(producer, topic, records, warmup, count, failed);
            producer.flush();
            double seconds = (System.nanoTime() - start) / 1e9;
            if (failed.get() != null) {
                // Not rethrown: the source launcher trims the stack trace of what main
                // throws, and one captured on the producer's I/O thread is too short for it
                // ("IllegalArgumentException: 0 > -7" instead of the real error).
                System.err.println("send failed: " + failed.get());
                System.exit(1);
            }
            System.out.printf("records=%d seconds=%.3f records_per_s=%.1f%n",
                count, seconds, count / seconds);
        }
    }

    private static void send(KafkaProducer<byte[], byte[]> producer, String topic,
            List<byte[][]> records, long offset, long n, AtomicReference<Exception> failed) {
        for (long i = 0; i < n; i++) {
            byte[][] kv = records.get((int) ((offset + i) % records.size()));
            producer.send(new ProducerRecord<>(topic, kv[0], kv[1]), (meta, error) -> {
                if (error != null) {
                    failed.compareAndSet(null, error);
                }
            });
        }
    }
}
