/*
 * A command-line EST client built on Bouncy Castle's org.bouncycastle.est (BC 1.72),
 * used by tests/test_e2e_bouncycastle.py to drive a real `estkit serve`.
 *
 *   EstBc cacerts   --server HOST:PORT --ca ca.pem [--label L] --out chain.pem
 *   EstBc csrattrs  --server HOST:PORT --ca ca.pem [--label L] --out attrs.txt
 *   EstBc enroll    --server HOST:PORT --ca ca.pem [--label L] --user U --password P
 *                   --cn CN [--dns NAME] --key-out key.pem --out cert.pem
 *   EstBc reenroll  --server HOST:PORT --ca ca.pem [--label L] --cert cert.pem --key key.pem
 *                   --out renewed.pem
 *
 * Keys and CSRs are made with BC too (EC P-256, SHA256withECDSA). csrattrs
 * writes one line per entry: "oid <dotted>" or "attribute <dotted>", or "none"
 * on 204.  On failure it prints "error: <status> <message>" on stderr and exits 1.
 */

import java.io.FileReader;
import java.io.FileWriter;
import java.io.Reader;
import java.io.Writer;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Security;
import java.security.cert.TrustAnchor;
import java.security.cert.X509Certificate;
import java.security.spec.ECGenParameterSpec;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;

import javax.net.ssl.KeyManagerFactory;

import org.bouncycastle.asn1.ASN1ObjectIdentifier;
import org.bouncycastle.asn1.pkcs.PKCSObjectIdentifiers;
import org.bouncycastle.asn1.pkcs.PrivateKeyInfo;
import org.bouncycastle.asn1.x500.X500Name;
import org.bouncycastle.asn1.x509.Extension;
import org.bouncycastle.asn1.x509.Extensions;
import org.bouncycastle.asn1.x509.GeneralName;
import org.bouncycastle.asn1.x509.GeneralNames;
import org.bouncycastle.cert.X509CertificateHolder;
import org.bouncycastle.cert.jcajce.JcaX509CertificateConverter;
import org.bouncycastle.est.CACertsResponse;
import org.bouncycastle.est.CSRAttributesResponse;
import org.bouncycastle.est.CSRRequestResponse;
import org.bouncycastle.est.ESTException;
import org.bouncycastle.est.ESTService;
import org.bouncycastle.est.EnrollmentResponse;
import org.bouncycastle.est.jcajce.JcaHttpAuthBuilder;
import org.bouncycastle.est.jcajce.JcaJceUtils;
import org.bouncycastle.est.jcajce.JsseESTServiceBuilder;
import org.bouncycastle.jce.provider.BouncyCastleProvider;
import org.bouncycastle.openssl.PEMKeyPair;
import org.bouncycastle.openssl.PEMParser;
import org.bouncycastle.openssl.jcajce.JcaPEMKeyConverter;
import org.bouncycastle.openssl.jcajce.JcaPEMWriter;
import org.bouncycastle.openssl.jcajce.JcaPKCS8Generator;
import org.bouncycastle.operator.jcajce.JcaContentSignerBuilder;
import org.bouncycastle.pkcs.PKCS10CertificationRequest;
import org.bouncycastle.pkcs.PKCS10CertificationRequestBuilder;
import org.bouncycastle.pkcs.jcajce.JcaPKCS10CertificationRequestBuilder;

public class EstBc {
    public static void main(String[] argv) {
        try {
            if (argv.length < 1) {
                throw new IllegalArgumentException("usage: EstBc cacerts|csrattrs|enroll|reenroll --option value ...");
            }
            Map<String, String> opt = new HashMap<>();
            for (int i = 1; i < argv.length; i += 2) {
                if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                    throw new IllegalArgumentException("expected --option value, got " + argv[i]);
                }
                opt.put(argv[i].substring(2), argv[i + 1]);
            }
            // JcaJceUtils' certification-path trust manager asks for the "BC" provider by name.
            Security.addProvider(new BouncyCastleProvider());
            run(argv[0], opt);
        } catch (ESTException e) {
            System.err.println("error: " + e.getStatusCode() + " " + e.getMessage());
            System.exit(1);
        } catch (Exception e) {
            System.err.println("error: 0 " + e.getClass().getName() + ": " + e.getMessage());
            System.exit(1);
        }
    }

    static String need(Map<String, String> opt, String name) {
        String v = opt.get(name);
        if (v == null) {
            throw new IllegalArgumentException("missing --" + name);
        }
        return v;
    }

    static void run(String op, Map<String, String> opt) throws Exception {
        JsseESTServiceBuilder builder = new JsseESTServiceBuilder(need(opt, "server"), trustManagers(need(opt, "ca")))
                .withTimeout(15000);
        if (opt.containsKey("label")) {
            builder.withLabel(opt.get("label"));
        }
        switch (op) {
            case "cacerts": {
                CACertsResponse r = builder.build().getCACerts();
                writePem(need(opt, "out"), ESTService.storeToArray(r.getCertificateStore()));
                break;
            }
            case "csrattrs": {
                CSRRequestResponse r = builder.build().getCSRAttributes();
                StringBuilder sb = new StringBuilder();
                if (!r.hasAttributesResponse()) {
                    sb.append("none\n");
                } else {
                    CSRAttributesResponse attrs = r.getAttributesResponse();
                    for (ASN1ObjectIdentifier oid : attrs.getRequirements()) {
                        sb.append(attrs.isAttribute(oid) ? "attribute " : "oid ").append(oid.getId()).append('\n');
                    }
                }
                try (Writer w = new FileWriter(need(opt, "out"))) {
                    w.write(sb.toString());
                }
                break;
            }
            case "enroll": {
                KeyPairGenerator kpg = KeyPairGenerator.getInstance("EC");
                kpg.initialize(new ECGenParameterSpec("secp256r1"));
                KeyPair kp = kpg.generateKeyPair();
                String cn = need(opt, "cn");
                GeneralNames san = new GeneralNames(new GeneralName(GeneralName.dNSName, opt.getOrDefault("dns", cn)));
                PKCS10CertificationRequest csr = csr(new X500Name("CN=" + cn), kp, san);
                EnrollmentResponse r = builder.build().simpleEnroll(false, csr,
                        new JcaHttpAuthBuilder(need(opt, "user"), need(opt, "password").toCharArray()).build());
                writePem(need(opt, "key-out"), new Object[] {new JcaPKCS8Generator(kp.getPrivate(), null)});
                writePem(need(opt, "out"), enrolled(r));
                break;
            }
            case "reenroll": {
                X509CertificateHolder cert = (X509CertificateHolder) readPem(need(opt, "cert"));
                PrivateKey key = privateKey(readPem(need(opt, "key")));
                X509Certificate jcert = new JcaX509CertificateConverter().getCertificate(cert);
                KeyStore ks = KeyStore.getInstance("PKCS12");
                ks.load(null, null);
                char[] pw = "estbc".toCharArray();
                ks.setKeyEntry("client", key, pw, new X509Certificate[] {jcert});
                KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
                kmf.init(ks, pw);
                builder.withKeyManagers(kmf.getKeyManagers());
                // Renew: same key, same subject and subjectAltName (RFC 7030 section 4.2.2).
                GeneralNames san = GeneralNames.fromExtensions(cert.getExtensions(), Extension.subjectAlternativeName);
                PKCS10CertificationRequest csr = csr(cert.getSubject(), new KeyPair(jcert.getPublicKey(), key), san);
                EnrollmentResponse r = builder.build().simpleEnroll(true, csr, null);
                writePem(need(opt, "out"), enrolled(r));
                break;
            }
            default:
                throw new IllegalArgumentException("unknown operation " + op);
        }
    }

    static X509CertificateHolder[] enrolled(EnrollmentResponse r) {
        if (!r.isCompleted()) {
            throw new IllegalStateException("enrollment not completed (retry after " + r.getNotBefore() + ")");
        }
        return ESTService.storeToArray(r.getStore());
    }

    static PKCS10CertificationRequest csr(X500Name subject, KeyPair kp, GeneralNames san) throws Exception {
        PKCS10CertificationRequestBuilder b = new JcaPKCS10CertificationRequestBuilder(subject, kp.getPublic());
        if (san != null) {
            b.addAttribute(PKCSObjectIdentifiers.pkcs_9_at_extensionRequest,
                    new Extensions(new Extension(Extension.subjectAlternativeName, false, san.getEncoded())));
        }
        return b.build(new JcaContentSignerBuilder("SHA256withECDSA").build(kp.getPrivate()));
    }

    static javax.net.ssl.X509TrustManager[] trustManagers(String caPem) throws Exception {
        Set<TrustAnchor> anchors = new HashSet<>();
        JcaX509CertificateConverter conv = new JcaX509CertificateConverter();
        try (PEMParser p = new PEMParser(new FileReader(caPem))) {
            Object o;
            while ((o = p.readObject()) != null) {
                anchors.add(new TrustAnchor(conv.getCertificate((X509CertificateHolder) o), null));
            }
        }
        if (anchors.isEmpty()) {
            throw new IllegalArgumentException("no certificate in " + caPem);
        }
        return JcaJceUtils.getCertPathTrustManager(anchors, null);
    }

    static Object readPem(String path) throws Exception {
        try (Reader r = new FileReader(path); PEMParser p = new PEMParser(r)) {
            Object o = p.readObject();
            if (o == null) {
                throw new IllegalArgumentException("no PEM object in " + path);
            }
            return o;
        }
    }

    static PrivateKey privateKey(Object pem) throws Exception {
        JcaPEMKeyConverter conv = new JcaPEMKeyConverter();
        if (pem instanceof PEMKeyPair) {
            return conv.getPrivateKey(((PEMKeyPair) pem).getPrivateKeyInfo());
        }
        return conv.getPrivateKey((PrivateKeyInfo) pem);
    }

    static void writePem(String path, Object[] objects) throws Exception {
        try (JcaPEMWriter w = new JcaPEMWriter(new FileWriter(path))) {
            for (Object o : objects) {
                w.writeObject(o);
            }
        }
    }
}
